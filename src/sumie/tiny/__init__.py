"""sumie-tiny: a small Stable Diffusion trained in this repo on a synthetic world of flat shapes.

`data` draws the world and writes its captions; `evaluate` judges generated images by plain image
analysis (no neural network). Training and the shipped weights are to come (issue 5).
"""
