"""Preference tuning (DPO / IPO) on the fine-tuning trainer: finetune/dpo.py."""
