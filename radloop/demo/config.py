"""What the demo generates and how it drives the loop (:class:`DemoConfig`), and what it records on the way
(:class:`DemoState`, the figures of the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.approval import DEFAULT_POLICY_FILE, ApprovalPolicy


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how it drives the loop."""

    radiographs: int = 600
    image_size: int = 512
    ct_slices: int = 300
    ct_size: int = 512
    #: three rounds. Four (``--radiographs 800 --waves 4``) all but remove cohorts with no approval
    #: (bench/approval_odds.py: 12.8% -> 0.0%), but neither makes the quality target reliable (55% and 58% of
    #: cohorts), and on this seed the final champion then missed the sensitivity target in a run that took 14-15
    #: minutes instead of 8-9 (session 18, docs/demo.md "Why these defaults")
    waves: int = 3
    #: labels read per round (a round follows each wave; by default the whole wave is read)
    reads_per_round: int = 180
    read_error_rate: float = 0.03
    #: two reads per case and the third reader adjudicating disagreements (the verification service's double-read
    #: mode). With single reads, 3% reader error put about two negatives among the ~29 validation positives; the
    #: operating threshold (the split-conformal rule for sensitivity 0.9: the 3rd-lowest positive score) then fell
    #: among the negatives' scores in about one run in four, specificity missed the policy's floor and no model was
    #: approved (a session-15 run: AUC 0.94, specificity 0.41). Double reading leaves about 0.4% label error: the
    #: ground truth a hospital would build a locked evaluation set from (docs/demo.md, "Why these defaults")
    double_read: bool = True
    seed: int = 7
    #: synthetic difficulty in [0, 1] (training.synthetic; 0.5 is its calibrated default, which needs far more
    #: labels and larger inputs than a 10-minute CPU demo can train: see docs/training.md). With 0.3 and 30%
    #: prevalence the third model reached locked-set AUC 0.73 and the locked set held 18 positives, so under the
    #: shipped policy (20 + 20, the AUC's lower bound >= 0.75) nothing could be approved; with 0.0 and 40% the third
    #: model is approved (measured: AUC 0.90, 95% CI lower bound 0.80, 22 positives; docs/demo.md)
    difficulty: float = 0.0
    prevalence: float = 0.4
    #: acquiring sites of the cohort (training.synthetic SITES). One: the generator's three-site default (its
    #: noise, collimation and markers) did not earn an approval reliably within the demo's 540 labels: at 64 px inputs
    #: none (locked-set AUC 0.83, lower bound 0.73); at 128 px one run of two (AUC 0.876, lower bound 0.80; the other
    #: 0.84, lower bound 0.747, below the floor 0.75 by 0.003). Offline, 458 labels at 128 px reached test AUC 0.92
    #: (docs/demo.md)
    sites: int = 1
    train_epochs: int = 15
    train_batch_size: int = 16
    #: 64 px inputs on the one-site cohort (``sites``), the configuration the demo has earned approvals with since
    #: round 6 (docs/demo.md)
    train_image_size: int = 64
    #: resnet10 (one basic block per stage) trains about twice as fast as resnet18 on a CPU, as accurately at this size
    train_arch: str = "resnet10"
    #: torch threads of a training run (triage keeps one)
    train_threads: int = 2
    #: a round's reads, so each round triggers one run at its end (a run during a round slows the reading)
    trigger_min_new_labels: int = 180
    trigger_min_per_class: int = 20
    #: share of each wave sent over DIMSE and through the S3 drop folder (the rest goes by STOW-RS)
    dimse_share: float = 0.1
    s3_share: float = 0.1
    #: concurrent sends (STOW-RS batches of 8, the C-STORE association, the S3 drop), as a PACS pushes over a few
    senders: int = 3
    #: share of the cohort held back and sent after the last round, to show triage using the newest champion
    final_share: float = 0.1
    round_timeout_s: float = 420.0
    out_dir: Path = Path("demo-report")
    keep_running: bool = False
    #: whether the demo's data can earn an approval under the shipped policy. The quick demo's cannot (see
    #: :meth:`quick`): it checks the loop up to an honest decision, pending with its reasons.
    expect_approval: bool = True
    #: the quality the final champion should reach on the locked set (issue 18's target for the full demo): reported
    #: as met or not, beside the policy's decisions; the policy, not this target, decides what is approved
    target_auc: float = 0.85
    target_sensitivity: float = 0.9
    target_specificity: float = 0.6

    @classmethod
    def quick(cls, **kw: Any) -> DemoConfig:
        """One turn of the loop on small data, in about three minutes: one wave, one round of reading, one training run
        on all of its labels, the registry's decision, then the late arrivals scored. (Two rounds on this cohort meant
        a first model trained on ~60 images, and a minute longer.) Easier cases.

        It runs under the **shipped** approval policy, and its model does not earn approval, honestly: the 216 read
        radiographs of ~110 patients leave a locked evaluation set of about 30 images (11 positive in a measured run)
        and a validation split of about as many, below the policy's minimum of 20 positives and 20 negatives; at that
        size an AUC's 95% interval is about ±0.17 wide. So the model stays pending with those reasons (or, with a
        locked-set AUC below ``auc_floor``, the pipeline's gate does not register it), and the late arrivals are
        scored by no model. Earning approval needs about twice the labels (and a better model than 170
        training images give: earlier runs measured AUC 0.66-0.71), which is the full demo, not a `make test` step.
        (``expect_approval=False``: the report and the e2e test check the decision against the policy instead.)"""
        base = dict(radiographs=240, image_size=128, ct_slices=40, ct_size=256, waves=1, reads_per_round=216,
                    double_read=False,
                    train_epochs=30, train_batch_size=16, train_image_size=64, trigger_min_new_labels=200,
                    trigger_min_per_class=20,
                    round_timeout_s=300.0, difficulty=0.0, prevalence=0.5, expect_approval=False)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]

    def approval_policy(self) -> ApprovalPolicy:
        """The approval policy the demo's services read (``RADLOOP_APPROVAL_POLICY_FILE``): the shipped document
        (shared/approval_policy.json), unchanged. The demo does not lower any floor: a version it cannot earn
        approval for stays pending, with the reasons, as it would anywhere else."""
        return ApprovalPolicy.load(DEFAULT_POLICY_FILE)


@dataclass
class DemoState:
    truth: dict[str, int] = field(default_factory=dict)  # sop_uid -> observed label (0/1)
    patient_of: dict[str, str] = field(default_factory=dict)
    waves: list[list[dict[str, Any]]] = field(default_factory=list)
    final_wave: list[dict[str, Any]] = field(default_factory=list)
    ingest_ms: list[float] = field(default_factory=list)
    sent_by: dict[str, int] = field(default_factory=lambda: {"stow": 0, "dimse": 0, "s3": 0})
    reads: list[dict[str, Any]] = field(default_factory=list)
    read_times: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    ct_files: list[Path] = field(default_factory=list)
    ct_series: tuple[str, str] | None = None
    wave_of: dict[str, int] = field(default_factory=dict)
    wave_started: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: wall seconds per stage, in order (the report's "where the time went")
    stages: dict[str, float] = field(default_factory=dict)

