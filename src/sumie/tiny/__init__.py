"""sumie-tiny: a small Stable Diffusion trained in this repo on a synthetic world of flat shapes.

`data` draws the world and writes its captions, `train` trains the VAE, text encoder and UNet on a CPU,
`evaluate` judges generated images by plain image analysis (no neural network). The trained model
ships in `model/` as an ordinary diffusers folder, addressable as "sumie-tiny".
"""

from pathlib import Path

NAME = "sumie-tiny"
MODEL_DIR = Path(__file__).parent / "model"
# Default sampling for the shipped model: set before training, confirmed by `sumie eval-tiny` (docs/tiny.md).
STEPS = 20
GUIDANCE = 5.0
