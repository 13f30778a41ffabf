"""fastoptim inside Lightning's Trainer and Hugging Face's Trainer.

Both frameworks take the optimizer the user builds, wrap a scheduler around
it, step it, and save and restore its ``state_dict`` in their checkpoints.
Each test trains the same tiny regression twice, once with torch.optim.AdamW
and once with fastoptim.AdamW, and compares the trained weights and the
optimizer state; the checkpoint tests stop a run half way and resume it from the
framework's checkpoint (fastoptim's state resumed by fastoptim, or loaded
into torch.optim), and compare with torch.optim stopped and resumed the same
way.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fastoptim

from ._common import assert_same_state, assert_same_tensors, tiny_model

lightning = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

BATCHES_PER_EPOCH = 6
BATCH = 8
#: AdamW's kernel and torch's fused-free path round differently in the last bits
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _data(seed: int = 1) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(BATCHES_PER_EPOCH * BATCH, 5, generator=generator)
    targets = torch.randn(BATCHES_PER_EPOCH * BATCH, 3, generator=generator)
    return TensorDataset(inputs, targets)


# ----------------------------------------------------------------------------- Lightning


class _Regression(lightning.LightningModule):
    """A tiny regression whose optimizer class is chosen by the test; lr stepped every batch."""

    def __init__(self, optimizer_class: type) -> None:
        super().__init__()
        self.net = tiny_model()
        self.optimizer_class = optimizer_class

    def training_step(self, batch, batch_index):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        optimizer = self.optimizer_class(self.net.parameters(), lr=0.02, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _trainer(tmp_path, max_steps: int) -> lightning.Trainer:
    return lightning.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def _fit(tmp_path, optimizer_class: type, max_steps: int, ckpt_path=None) -> tuple[_Regression, lightning.Trainer]:
    model = _Regression(optimizer_class)
    trainer = _trainer(tmp_path, max_steps)
    trainer.fit(model, DataLoader(_data(), batch_size=BATCH), ckpt_path=ckpt_path)
    return model, trainer


def test_lightning_trains_with_fastoptim_as_with_torch_optim(tmp_path):
    fast_model, fast_trainer = _fit(tmp_path / "fast", fastoptim.AdamW, 2 * BATCHES_PER_EPOCH)
    torch_model, torch_trainer = _fit(tmp_path / "torch", torch.optim.AdamW, 2 * BATCHES_PER_EPOCH)
    (fast_opt,), (torch_opt,) = fast_trainer.optimizers, torch_trainer.optimizers
    assert type(fast_opt) is fastoptim.AdamW
    assert fast_trainer.global_step == torch_trainer.global_step == 2 * BATCHES_PER_EPOCH
    assert_same_tensors(list(fast_model.parameters()), list(torch_model.parameters()), **TOLERANCE)
    assert_same_state(fast_opt, torch_opt, **TOLERANCE)
    # the scheduler Lightning stepped every batch moved fastoptim's lr as it moved torch's
    assert fast_opt.param_groups[0]["lr"] == torch_opt.param_groups[0]["lr"] == 0.02 * 0.5**3


def _stop_and_resume(tmp_path, first_with: type, resumed_with: type) -> tuple[_Regression, lightning.Trainer]:
    """One epoch with ``first_with``, Lightning's checkpoint, then a second epoch resumed with ``resumed_with``."""
    _, first_half = _fit(tmp_path / "first", first_with, BATCHES_PER_EPOCH)
    checkpoint = tmp_path / "half.ckpt"
    first_half.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]
    assert saved["state"][0].keys() == {"step", "exp_avg", "exp_avg_sq"}  # torch's layout
    return _fit(tmp_path / "resumed", resumed_with, 2 * BATCHES_PER_EPOCH, ckpt_path=checkpoint)


@pytest.mark.parametrize("resumed_with", [fastoptim.AdamW, torch.optim.AdamW], ids=["fastoptim", "torch.optim"])
def test_lightning_resumes_a_fastoptim_checkpoint_as_torch_resumes_its_own(tmp_path, resumed_with):
    """fastoptim's checkpoint, resumed by either library, continues as torch.optim's resumed by torch.optim."""
    resumed, trainer = _stop_and_resume(tmp_path / "fast", fastoptim.AdamW, resumed_with)
    reference, reference_trainer = _stop_and_resume(tmp_path / "torch", torch.optim.AdamW, torch.optim.AdamW)
    assert type(trainer.optimizers[0]) is resumed_with
    assert trainer.global_step == reference_trainer.global_step == 2 * BATCHES_PER_EPOCH
    assert_same_tensors(list(resumed.parameters()), list(reference.parameters()), **TOLERANCE)
    assert_same_state(trainer.optimizers[0], reference_trainer.optimizers[0], **TOLERANCE)
    assert trainer.optimizers[0].param_groups[0]["lr"] == reference_trainer.optimizers[0].param_groups[0]["lr"]


# ----------------------------------------------------------------------------- Hugging Face


class _HFRegression(torch.nn.Module):
    """The same regression as a Hugging Face model: a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()

    def forward(self, inputs, labels=None):
        outputs = self.net(inputs)
        return {"loss": torch.nn.functional.mse_loss(outputs, labels), "logits": outputs}


def _hf_examples() -> list[dict[str, torch.Tensor]]:
    return [{"inputs": inputs, "labels": targets} for inputs, targets in _data()]


def _hf_train(tmp_path, optimizer_class: type, *, save_steps: int | None = None, resume_from=None):
    model = _HFRegression()
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2 * BATCHES_PER_EPOCH,
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        report_to=[],
        logging_strategy="no",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    optimizer = optimizer_class(model.parameters(), lr=0.02, weight_decay=0.1)
    trainer = transformers.Trainer(
        model=model,
        args=arguments,
        train_dataset=_hf_examples(),
        data_collator=transformers.default_data_collator,
        optimizers=(optimizer, None),  # the Trainer builds its linear schedule around it
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return model, trainer


def test_hf_trainer_trains_with_fastoptim_as_with_torch_optim(tmp_path):
    fast_model, fast_trainer = _hf_train(tmp_path / "fast", fastoptim.AdamW)
    torch_model, torch_trainer = _hf_train(tmp_path / "torch", torch.optim.AdamW)
    # the Trainer wraps it (accelerate's AcceleratedOptimizer) and steps it through the wrapper
    assert isinstance(getattr(fast_trainer.optimizer, "optimizer", fast_trainer.optimizer), fastoptim.AdamW)
    assert fast_trainer.state.global_step == torch_trainer.state.global_step == 2 * BATCHES_PER_EPOCH
    assert_same_tensors(list(fast_model.parameters()), list(torch_model.parameters()), **TOLERANCE)
    # the Trainer's linear decay reached zero on both
    assert fast_trainer.lr_scheduler.get_last_lr() == torch_trainer.lr_scheduler.get_last_lr() == [0.0]


def _hf_stop_and_resume(tmp_path, optimizer_class: type):
    """A run that saves ``optimizer.pt`` half way, then a new Trainer resumed from that checkpoint."""
    _hf_train(tmp_path / "first", optimizer_class, save_steps=BATCHES_PER_EPOCH)
    checkpoint = tmp_path / "first" / f"checkpoint-{BATCHES_PER_EPOCH}"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert saved["state"][0].keys() == {"step", "exp_avg", "exp_avg_sq"}  # torch's layout
    return _hf_train(tmp_path / "resumed", optimizer_class, resume_from=str(checkpoint))


def test_hf_trainer_resumes_fastoptim_as_torch_optim(tmp_path):
    resumed, trainer = _hf_stop_and_resume(tmp_path / "fast", fastoptim.AdamW)
    reference, reference_trainer = _hf_stop_and_resume(tmp_path / "torch", torch.optim.AdamW)
    assert trainer.state.global_step == reference_trainer.state.global_step == 2 * BATCHES_PER_EPOCH
    assert_same_tensors(list(resumed.parameters()), list(reference.parameters()), **TOLERANCE)
