"""Distillation: ``streamtag distill`` turns a teacher bundle (musicnn-msd) into a small streaming student.

    corpus.py     the corpus on disk (corpus.jsonl + 16 kHz audio) that every stage reads
    teacher.py    the teacher's targets on a grid of windows, cached per track
    features.py   the teacher's frozen front end + mid end features (``--frontend musicnn``), cached per track
    tracks.py     the cached tracks as training batches (windows, or multi-track sequences for stateful students)
    agreement.py  the student against the teacher on held-out tracks, and its cost per hop
    cards.py      the student's model card, from its config.json and card.json
    run.py        the command: label, train with ``loop.fit``, evaluate, write the bundle

``python -m streamtag.train.distill`` is ``streamtag distill`` (its flags are declared once, in ``train/cli.py``).
The tools that built the shipped students' corpus live outside the package, in the repository's research/.
"""
