"""mtserve.training: how the bundled model was made. Not part of serving.

- ``data``: the Ding German–English dictionary (a Debian package) into train/dev/test splits.
- ``vocab``: a joint SentencePiece vocabulary in the Marian layout (the Marian tokenizer reads it back).
- ``train``: training from scratch or continued (``mtserve train`` / ``python -m mtserve.training.train``).
- ``evaluate``: BLEU and chrF of a model directory on the splits.
- ``average``: the mean of several models of one architecture.
- ``corpus``: the larger corpus v2 from the Debian archive (``python -m mtserve.training.corpus``; see
  ``CORPUS.md``), built from ``ddtp``, ``gettext_catalogs``, ``appstream``, ``desktop_entries`` and
  ``debconf_templates`` (with ``debs``, ``package_files`` and ``alignment`` underneath), cleaned by
  ``cleaning`` and extended by ``augment``.
"""
