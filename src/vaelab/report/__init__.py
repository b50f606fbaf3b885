"""What a user looks at: a page per run (``report.html``), runs side by side (``vaelab
compare``) and the lecture's figures (``vaelab figures``). It reads run directories (through
:mod:`vaelab.rundir` and :mod:`vaelab.loading`) and never imports the trainer."""
