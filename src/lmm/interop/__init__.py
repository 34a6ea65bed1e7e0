"""Interoperability with the field's tools (lmms-eval today; export and import live beside it in lmm.export, lmm.convert_llava)."""
