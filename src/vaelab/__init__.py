"""vaelab: autoencoders, VAEs and GANs on real images, measured honestly.

    import vaelab
    cfg = vaelab.make_config(data="digits", latent_dim=2, epochs=20, out="runs/mine")
    run_dir = vaelab.train(cfg)
    model = vaelab.load(run_dir)       # encode / decode / sample / reconstruct
    vaelab.evaluate(run_dir, k=1000)   # {"elbo", "nll", "bpd", "n", "k", ...}
"""
from .version import __version__  # noqa: F401

from .api import evaluate, load, pictures, train  # noqa: E402
from .errors import VaelabError  # noqa: E402
from .evaluation.probe import finetune, linear_probe  # noqa: E402
from .models import MODELS  # noqa: E402
from .run import RunConfig, make_config  # noqa: E402

__all__ = ["MODELS", "RunConfig", "VaelabError", "__version__", "evaluate", "finetune", "linear_probe", "load", "make_config",
           "pictures", "train"]
