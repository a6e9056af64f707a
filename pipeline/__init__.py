"""r1-pipeline: the shared library and orchestration for the DeepSeek-R1 post-training recipe.

Stage modules live in ``stages/``; everything they share (config, data, checkpoints, the SFT
trainer, logging) lives here.
"""
