"""The safety system around a request (DESIGN decision 11): guards that judge text, and the pipeline that runs them.

Every guard takes a `Subject` (the text to judge, with the conversation it belongs to) and returns a
`Verdict`; whether a verdict blocks, warns or is ignored is the pipeline's business (`GuardMode`), not the
guard's. See verdict.py for the shared types.
"""
