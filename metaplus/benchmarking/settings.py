"""The benchmarked settings: name -> (description, overrides), explicit values of the published
settings, so a benchmark measures them even if an experiment's defaults move. bench/speed.py measures
each; bench/gpu_check.py trains MAML++ mini-ImageNet 5w1s from the same table."""

# mini-ImageNet is read with at most this many images per class: the cost of an episode does not depend
# on how many images a class has, and decoding fewer keeps a benchmark's start short.
MINI_IMAGES_PER_CLASS = 40

SETTINGS: dict[str, tuple[str, list[str]]] = {
    "mamlpp_omniglot_5w1s": (
        "MAML++ Omniglot 5w1s (released config): Conv-4 64 leaky ReLU, 1 query/class, meta-batch 8, "
        "5 second-order steps",
        [
            "experiment=mamlpp_omniglot_5w1s",
            "model.filters=64",
            "model.activation=leaky_relu",
            "data.ways=5",
            "data.shots=1",
            "data.queries=1",
            "data.meta_batch_size=8",
            "algo.inner_steps=5",
            "algo.da=false",
        ],
    ),
    "mamlpp_omniglot_5w1s_q15_mb16": (
        "MAML++ Omniglot 5w1s, 15 queries/class, meta-batch 16 (issue 13's measured case)",
        [
            "experiment=mamlpp_omniglot_5w1s",
            "model.filters=64",
            "model.activation=leaky_relu",
            "data.ways=5",
            "data.shots=1",
            "data.queries=15",
            "data.meta_batch_size=16",
            "algo.inner_steps=5",
            "algo.da=false",
        ],
    ),
    "maml_omniglot_20w1s": (
        "MAML Omniglot 20w1s: Conv-4 64 ReLU, 1 query/class (MAML's code), meta-batch 16, 5 second-order steps",
        [
            "experiment=omniglot_20w1s",
            "model.filters=64",
            "data.ways=20",
            "data.shots=1",
            "data.queries=1",
            "data.meta_batch_size=16",
            "algo.inner_steps=5",
            "algo.first_order=false",
        ],
    ),
    "mamlpp_miniimagenet_5w1s": (
        "MAML++ mini-ImageNet 5w1s: Conv-4 48 leaky ReLU, 15 queries/class, meta-batch 2, 5 second-order steps",
        [
            "experiment=mamlpp_miniimagenet_5w1s",
            "model.filters=48",
            "model.activation=leaky_relu",
            "data.ways=5",
            "data.shots=1",
            "data.queries=15",
            "data.meta_batch_size=2",
            "algo.inner_steps=5",
            "algo.da=false",
            f"data.source.max_images_per_class={MINI_IMAGES_PER_CLASS}",
        ],
    ),
    "mamlpp_miniimagenet_5w1s_resnet12": (
        "MAML++ mini-ImageNet 5w1s with ResNet-12 (meta-batch 2, 5 second-order steps, 15 queries/class)",
        [
            "experiment=mamlpp_miniimagenet_5w1s",
            "model=resnet12",
            "data.ways=5",
            "data.shots=1",
            "data.queries=15",
            "data.meta_batch_size=2",
            "algo.inner_steps=5",
            "algo.da=false",
            f"data.source.max_images_per_class={MINI_IMAGES_PER_CLASS}",
        ],
    ),
}
