"""The bandstat detector as the contract's ONNX graph, built with the ``onnx`` helper API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .model import LN10, OPSET, BandStat

__all__ = ["to_onnx"]


def to_onnx(model: BandStat, n_frames: int, metadata: Mapping[str, Any]) -> Any:
    """The contract graph ``logmel[batch, n_frames, n_mels] -> score[batch], bands[batch,
    n_mels]`` (float32, opset 17), with ``metadata`` under the contract's key; checked."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from asd_edge.modelspec import METADATA_KEY

    m, d = model.n_mels, model.dims
    f32 = np.float32

    def const(name: str, value: Any, dtype: Any = f32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        const("db_to_ln", LN10 / 10.0),
        const("ln_to_db", 10.0 / LN10),
        const("center", model.center),
        const("scale", model.scale),
        const("frames_axis", [1], np.int64),
        const("mels_axis", [2], np.int64),
        const("first", [0], np.int64),
        const("second", [1], np.int64),
        const("all_but_last", [n_frames - 1], np.int64),
        const("to_end", [n_frames], np.int64),
    ]
    node = helper.make_node
    nodes = [
        node("ReduceMean", ["logmel"], ["mean3"], axes=[1], keepdims=1),
        node("Squeeze", ["mean3", "frames_axis"], ["mean"]),
        node("Sub", ["logmel", "mean3"], ["centred"]),
        node("Mul", ["centred", "centred"], ["sq"]),
        node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),
        node("Sqrt", ["var"], ["spread"]),
        node("Slice", ["logmel", "second", "to_end", "frames_axis"], ["later"]),
        node("Slice", ["logmel", "first", "all_but_last", "frames_axis"], ["earlier"]),
        node("Sub", ["later", "earlier"], ["step"]),
        node("Abs", ["step"], ["abs_step"]),
        node("ReduceMean", ["abs_step"], ["flux"], axes=[1], keepdims=0),
        node("Mul", ["logmel", "db_to_ln"], ["ln_power"]),
        node("Exp", ["ln_power"], ["power"]),
        node("ReduceSum", ["power", "mels_axis"], ["frame_power"], keepdims=0),
        node("ReduceMean", ["frame_power"], ["mean_power"], axes=[1], keepdims=1),
        node("Log", ["mean_power"], ["ln_level"]),
        node("Mul", ["ln_level", "ln_to_db"], ["level"]),
        node("Concat", ["mean", "spread", "flux", "level"], ["stats"], axis=1),
        node("Sub", ["stats", "center"], ["dev"]),
        node("Div", ["dev", "scale"], ["z"]),
    ]
    if model.scorer == "topk":
        inits += [const("k", [model.k], np.int64), const("band_center", model.center[:m])]
        nodes += [
            node("Abs", ["z"], ["abs_z"]),
            node("TopK", ["abs_z", "k"], ["top", "top_index"], axis=1),
            node("ReduceMean", ["top"], ["distance"], axes=[1], keepdims=0),
            node("Sub", ["mean", "band_center"], ["bands"]),
        ]
    elif model.scorer in ("knn", "knn_topk"):
        assert model.coreset is not None
        core = model.coreset
        # Distances as sums of squared differences, not |z|^2 + |c|^2 - 2 z.c: in float32
        # that form cancels catastrophically for windows close to a coreset window.
        inits += [
            const("coreset", core),
            const("stats_axis", [2], np.int64),
            const("coreset_bands_db", core[:, :m] * model.scale[:m] + model.center[:m]),
        ]
        nodes += [
            node("Unsqueeze", ["z", "second"], ["z3"]),
            node("Sub", ["z3", "coreset"], ["diff"]),
            node("Mul", ["diff", "diff"], ["diff_sq"]),
            node("ReduceSum", ["diff_sq", "stats_axis"], ["dist2"], keepdims=0),
            node("ArgMin", ["dist2"], ["nearest"], axis=1, keepdims=0),
            node("Gather", ["coreset_bands_db", "nearest"], ["nearest_bands"], axis=0),
            node("Sub", ["mean", "nearest_bands"], ["bands"]),
        ]
        if model.scorer == "knn":
            inits.append(const("inv_dims", 1.0 / d))
            nodes += [
                node("ReduceMin", ["dist2"], ["nearest_d2"], axes=[1], keepdims=0),
                node("Mul", ["nearest_d2", "inv_dims"], ["per_stat"]),
                node("Sqrt", ["per_stat"], ["distance"]),
            ]
        else:
            assert model.local_scale is not None
            inits += [
                const("to_local", model.scale / model.local_scale),
                const("k", [model.k], np.int64),
            ]
            nodes += [
                node("Gather", ["coreset", "nearest"], ["nearest_z"], axis=0),
                node("Sub", ["z", "nearest_z"], ["resid"]),
                node("Abs", ["resid"], ["abs_resid"]),
                node("Mul", ["abs_resid", "to_local"], ["local_z"]),
                node("TopK", ["local_z", "k"], ["top", "top_index"], axis=1),
                node("ReduceMean", ["top"], ["distance"], axes=[1], keepdims=0),
            ]
    else:
        assert model.whitener is not None
        inits += [
            const("whitener", model.whitener),
            const("stats_axis", [1], np.int64),
            const("inv_dims", 1.0 / d),
            const("band_center", model.center[:m]),
        ]
        nodes += [
            node("MatMul", ["z", "whitener"], ["w"]),
            node("Mul", ["w", "w"], ["w_sq"]),
            node("ReduceSum", ["w_sq", "stats_axis"], ["maha2"], keepdims=0),
            node("Mul", ["maha2", "inv_dims"], ["per_stat"]),
            node("Sqrt", ["per_stat"], ["distance"]),
            node("Sub", ["mean", "band_center"], ["bands"]),
        ]
    fused = "score" if model.marked is None else "fused"
    if model.taus is None:
        nodes.append(node("Identity", ["distance"], [fused]))
    else:
        inits += [
            const("level_index", [d - 1], np.int64),
            const("distance_tau", model.taus[0]),
            const("loudness_tau", model.taus[1]),
        ]
        nodes += [
            node("Gather", ["z", "level_index"], ["level_z2"], axis=1),
            node("Squeeze", ["level_z2", "second"], ["level_z"]),
            node("Abs", ["level_z"], ["loudness"]),
            node("Div", ["distance", "distance_tau"], ["distance_ratio"]),
            node("Div", ["loudness", "loudness_tau"], ["loudness_ratio"]),
            node("Max", ["distance_ratio", "loudness_ratio"], [fused]),
        ]
    if model.marked is not None:  # windows close to a marked-normal one score low
        inits += [
            const("marked", model.marked),
            const("marked_axis", [1], np.int64),
            const("marked_stats_axis", [2], np.int64),
            const("marked_inv_dims", 1.0 / d),
            const("marked_gain", model.marked_gain),
        ]
        nodes += [
            node("Unsqueeze", ["z", "marked_axis"], ["marked_z3"]),
            node("Sub", ["marked_z3", "marked"], ["marked_diff"]),
            node("Mul", ["marked_diff", "marked_diff"], ["marked_sq"]),
            node("ReduceSum", ["marked_sq", "marked_stats_axis"], ["marked_d2"], keepdims=0),
            node("ReduceMin", ["marked_d2"], ["marked_min"], axes=[1], keepdims=0),
            node("Mul", ["marked_min", "marked_inv_dims"], ["marked_per_stat"]),
            node("Sqrt", ["marked_per_stat"], ["marked_distance"]),
            node("Mul", ["marked_distance", "marked_gain"], ["marked_cap"]),
            node("Min", ["fused", "marked_cap"], ["score"]),
        ]
    graph = helper.make_graph(
        nodes,
        f"bandstat_{model.scorer}",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", n_frames, m])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("bands", TensorProto.FLOAT, ["batch", m]),
        ],
        inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="asd-edge"
    )
    proto.ir_version = 8
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)})
    onnx.checker.check_model(proto, full_check=True)
    return proto
