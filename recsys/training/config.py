"""The training options: every optimisation hyper-parameter of
:class:`~recsys.training.trainer.Trainer`, declared once."""

from __future__ import annotations

from dataclasses import dataclass

from recsys.options import check_choices, option
from recsys.training.hardware import DEVICES, PRECISIONS
from recsys.training.losses import LOSSES


@dataclass
class TrainConfig:
    """Every optimisation hyper-parameter; each field is an option (``--lr`` ...)."""

    # None: ce where the catalogue is small enough for it, else sampled-softmax
    # (recsys.training.derive).
    loss: str | None = option(
        None,
        "training loss: ce full softmax; bce the paper's, one negative; sampled-softmax "
        "popularity negatives with log-Q correction; gbce gSASRec's (needs a long patience)",
        choices=LOSSES,
        default_text="from the data: ce for small catalogues, else sampled-softmax",
    )
    # Softer targets keep the full softmax from growing over-confident on the training
    # sequences (Szegedy et al., 2016).
    label_smoothing: float = option(
        0.0, "ce only: share of the target spread evenly over the catalogue; 0 = off"
    )
    epochs: int = option(200, "most epochs; early stopping usually ends sooner")
    batch_size: int = option(128, "users per batch (batched by similar length)")
    # None: 1e-3, more for batches of many target positions (recsys.training.derive).
    lr: float | None = option(
        None,
        "AdamW learning rate",
        default_text="from the data: 1e-3, larger for batches of over 1,000 target positions",
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "max gradient norm; 0 = off")
    num_negatives: int = option(256, "negatives for sampled-softmax and gbce")
    # Popularity negatives with the log-Q correction approximate the full softmax; uniform
    # ones (no correction needed) push down the long tail harder.
    negatives: str = option(
        "popularity",
        "how sampled-softmax draws its negatives: by popularity (log-Q corrected), or uniformly",
        choices=("popularity", "uniform"),
    )
    gbce_t: float = option(0.75, "gbce calibration")
    patience: int = option(
        10,
        "validations without improvement before stopping (gbce sits at the popularity "
        "level for dozens of epochs on small data: give it ~60)",
    )
    eval_every: int = option(1, "epochs between validations")
    # Once validation stalls, smaller steps can still settle deeper into the minimum the
    # optimiser circles in; early stopping still ends training ``patience`` validations
    # after the last improvement.
    lr_decay: float = option(
        1.0,
        "multiply the learning rate by this at every third of patience (at least 1) "
        "validations in a row without improvement; 1 = keep it",
    )
    # Validating and keeping an average of recent weights instead of the last ones: the
    # average sits nearer the middle of the minimum the optimiser circles in, and its
    # validation curve is smoother, so early stopping picks its epoch from less noise.
    # Half-life 1 epoch: Beauty validation NDCG@10 0.0664 -> 0.0705 (seed 0); ml-100k
    # 0.1161 -> 0.1156 (mean of 3 seeds, within noise). README "Why these defaults".
    average: float = option(
        1.0,
        "validate and keep an exponential moving average of the weights whose half-life is "
        "this many epochs; 0 = the last weights",
    )
    # The full softmax's products with the catalogue are most of a step's work; in
    # bfloat16 (float32 sums) they run ~4x faster on this CPU. Beauty and ml-100k
    # validation: README "Why these defaults".
    logits_precision: str = option(
        "auto",
        "number format of the ce loss's products with the whole catalogue (the model stays "
        "float32): bf16 is about 4x faster where the hardware has bfloat16 arithmetic; auto = "
        "bf16 there (a CUDA GPU, or a CPU with AVX512-BF16 or AMX), else fp32",
        choices=PRECISIONS,
    )
    seed: int = option(0, "random seed")
    threads: int = option(0, "torch threads; 0 = the cores this process may use")
    device: str = option(
        "auto",
        "where to train: auto = a CUDA GPU when torch sees one, else the CPU (results are "
        "bit-for-bit repeatable on the CPU only)",
        choices=DEVICES,
    )
    # "last" is the paper's; a random full window trains on older events too.
    window: str = option(
        "random",
        "which max-len events of a longer user an epoch trains on: a random full window, "
        "or the last",
        choices=("random", "last"),
    )

    # Events with the same timestamp are listed in the source file's order, which is not
    # the order people acted in; a model that learns it learns noise. ml-100k (half of its
    # events tie): validation NDCG@10 0.1146 -> 0.1220 (3 seeds). README "Why these
    # defaults". A log without ties trains exactly as with "keep".
    ties: str = option(
        "shuffle",
        "order of a user's events that share a timestamp, which the log does not know: "
        "shuffle it every epoch, or keep the prepared order (the input file's)",
        choices=("shuffle", "keep"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("epochs", "batch_size", "patience", "eval_every", "num_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected at least 1")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: expected 0 <= it < 1")
        if self.label_smoothing and self.loss not in (None, "ce"):
            raise ValueError(
                f"label_smoothing={self.label_smoothing} applies to loss 'ce' only; this "
                f"run's loss is {self.loss!r} (set loss to ce, or label_smoothing to 0)"
            )
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay={self.lr_decay}: expected above 0 and at most 1")
        if not 0.0 <= self.average <= 100.0:
            raise ValueError(f"average={self.average}: expected 0 (off) to 100 epochs")
