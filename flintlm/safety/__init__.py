"""Content safety: moderation backends behind one interface (`moderation.Moderator`).

No HTTP here: `api/routes/moderations.py` serves it, and guardrails call the same interface.
"""
