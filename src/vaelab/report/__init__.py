"""What a user looks at: a page per run (``report.html``) and runs side by side (``vaelab
compare``), with the page machinery the lecture's figures (:mod:`vaelab.lecture`) also use. It
reads run directories (through :mod:`vaelab.rundir` and :mod:`vaelab.loading`) and never imports
the trainer."""
