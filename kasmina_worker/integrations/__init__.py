"""Trainer integrations, each an optional extra: `hf` (Hugging Face `Trainer`), `lightning` (Lightning).

The worker core never imports them; import `kasmina_worker.integrations.hf` or `.lightning` directly.
"""
