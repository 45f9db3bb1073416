"""``visionkit tune``: hyperparameter search on Ray Tune, each trial a whole visionkit run.

:mod:`.space` checks ``tune.space``; :mod:`.search` is the driver (Ray Tune's searchers and
schedulers, ``Tuner.restore`` for ``--resume``); :mod:`.trial` is the trainable, a Ray Train
driver per trial; :mod:`.results` writes what a person reads at the end.
"""
