"""Research tools: one-off programs that built the distillation corpus and measured the shipped students.

They are not part of the product (the wheel does not install them); run them from a checkout, from the repository
root, as ``python -m research.<tool>``. Each module's docstring says what it produced and when to run it again.

    build_corpus.py    the unlabelled corpus of freely licensed music (Debian game music + ../shared/audio)
    extend_corpus.py   a longer corpus with the same held-out tracks (corpus2, the shipped students' corpus)
    liveness.py        which of musicnn's front-end channels fire on music: the students' ``live_channels``
    product_check.py   clip agreement through ``tag_audio`` (the product path), fp32 and bf16
    lite.py            the ``lite`` conv + GRU student (feature-level distillation); not shipped
"""
