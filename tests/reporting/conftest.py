"""One intra-op thread: on a shared 2-core machine, two spinning threads per process slow tiny models ~50x."""

import torch

torch.set_num_threads(1)
