"""One module per pipeline stage; each is run as its own DeepSpeed job by ``pipeline.run.launch``."""
