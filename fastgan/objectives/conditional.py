"""Class-conditional GAN (Mirza & Osindero 2014; projection discriminator, Miyato & Koyama 2018):
the same game as the plain GAN with a label y beside every sample,

    D:  min  d_loss(D(x, y), D(G(z, y), y))        G:  min  g_loss(D(G(z, y), y))

G takes (z, y) (fastgan.models: class-conditional BatchNorm, or a class embedding for MLPs); D takes
(x, y) (a projection head: logit = psi(phi(x)) + <embed(y), phi(x)>). The fakes of a D step take
the real batch's labels, so real and fake logits are compared class for class (and WGAN-GP's
interpolates pair a real and a fake of one class)."""
import torch

from .base import class_rows
from .gan import GAN


class Conditional(GAN):
    """G(z, y) against D(x, y) on labelled data (batches are (x, y) pairs, y in [0, num_classes))."""

    labels = True
    pack = False  # D judges (sample, label) pairs

    def __init__(self, num_classes: int):
        if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2):
            raise ValueError(f"Conditional: argument 'num_classes' must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes

    def bind(self, t):
        for name in ("generator", "discriminator"):
            k = getattr(t.nets[name], "num_classes", None)
            if k is not None and k != self.num_classes:
                raise ValueError(f"GANTrainer: the {name} is built for {k} classes, the objective for "
                                 f"{self.num_classes}")

    def check_data(self, data):
        y = getattr(data, "y", None)
        tensors = getattr(data, "tensors", None)
        if y is None and tensors and len(tensors) > 1:
            y = tensors[1]
        if isinstance(y, torch.Tensor) and y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"GANTrainer.fit: the labels of argument 'data' must lie in [0, {self.num_classes}) "
                             f"for this objective, got [{int(y.min())}, {int(y.max())}]")

    def split(self, t, batch):
        return batch

    def fake(self, t, n, y):
        return t.net("generator")(t.noise(n), y), y

    def discriminate(self, t, x, y):
        return t.net("discriminator")(x, y)

    def critic(self, t, y):
        D = t.net("discriminator")
        return lambda x: D(x, y)

    def generate(self, generator, z, y=None):
        if y is None:
            y = self.sample_labels(z.shape[0]).to(z.device)
        return generator(z, y)

    def sample_labels(self, n):
        return torch.arange(n) % self.num_classes

    def grid(self, t):
        return class_rows(t, self.num_classes)

    def config(self):
        return {"objective": "conditional", "num_classes": self.num_classes}
