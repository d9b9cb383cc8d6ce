"""A fine-tuning job: every option declared once (config.py), the job in explicit
phases (finetune.py), its inputs, the run folder it writes, what it says about
itself, the trackers it feeds, and the assembly of domain adaptation."""
