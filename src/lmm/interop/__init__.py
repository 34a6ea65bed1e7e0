"""Interoperability with the field's tools: export (HF Llava/LlavaNext, lmm directories), convert_llava, lmms-eval."""
