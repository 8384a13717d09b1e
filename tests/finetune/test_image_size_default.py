"""Fine-tuning takes a tlx checkpoint's pretraining view size unless --image-size is given."""
import pytest

import trainer.finetune as ft
from datakit.read import open_dataset
from tests.fixtures.datasets import make_ct_dataset
from trainer.tasks import get_task


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return open_dataset(make_ct_dataset(tmp_path_factory.mktemp("ds"), image_size=40))


def _size(ds, pretrain, *flags):
    cfg = ft.FinetuneConfig(task="radnet", data=str(ds.root), **dict(flags))
    return ft.resolve(cfg, get_task("radnet"), ds, "resnet-tiny", pretrain).image_size


def test_the_checkpoint_view_size_is_the_default(ds):
    assert _size(ds, {"image_size": 32, "normalize": "minmax"}) == 32       # a 32 px checkpoint: 32 px, not 40
    assert _size(ds, {"image_size": 32}, ("image_size", 48)) == 48          # --image-size wins
    assert _size(ds, None) == 40                                            # scratch / a state dict: the stored size
    assert _size(ds, {"normalize": "minmax"}) == 40                         # a checkpoint that does not say


def test_an_init_pretrained_on_imagenet_scaled_inputs_is_refused(ds):
    from trainer.errors import TrainerError

    assert _size(ds, {"input_scale": "unit", "image_size": 32}) == 32
    with pytest.raises(TrainerError, match=r"^the init was pretrained with --input-scale imagenet; trainer.finetune "
                                           r"feeds \[0, 1\] inputs only"):
        _size(ds, {"input_scale": "imagenet", "image_size": 32})
