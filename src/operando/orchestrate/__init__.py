"""Acting on the experiment: triggers, the command path to drivers, spots and dose."""
