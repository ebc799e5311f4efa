"""Permutation alignment of two networks (Git Re-Basin weight matching) and aligned barriers.

Hidden units of a network can be permuted without changing the function it computes: permute
the output units of a layer (rows of its weight, entries of its bias and of the normalization
that follows) and the input columns of the next layer the same way. Two independently trained
networks may sit in basins that are permutations of each other; the loss barrier on the straight
line between them then says more about the permutation than about the landscape (Entezari et
al. 2022).

Weight matching (Ainsworth et al. 2023, algorithm 2) chooses one permutation P_g per
permutation group g to maximize the inner product of the weights,

    max over {P_g} of  sum over tensors t of <W_a[t], P(W_b[t])>,

where P(W_b[t]) permutes every axis of tensor t that belongs to a group. It is solved by
coordinate descent: for each group in turn (random order, seeded), with the other permutations
fixed, the best P_g is a linear assignment on

    C_g[i, j] = sum over tensors t with an axis in g of  <W_a[t] unit i, P_{-g}(W_b[t]) unit j>

(`scipy.optimize.linear_sum_assignment`, maximized), repeated until a full pass improves the
objective by no more than 1e-12 (relative) or `max_iter` passes. The objective never decreases;
the result is a local optimum.

Which tensor axes share a permutation is a `PermutationSpec` (`landscape.align.spec`): derived
from the model's `torch.fx` graph run once on an example input (`permutation_spec`), or given by
hand for any model. Besides MLPs, CNNs and ResNets this covers transformers (one residual-stream
permutation shared by the embeddings, every block's input and output projections and every
LayerNorm/RMSNorm; one per MLP hidden layer; attention heads permuted as whole heads, with the
query/key dimensions and the value/output dimensions permuted within each head; tied embeddings
one tensor; positional embeddings, class tokens and biases following), modern convnets
(depthwise convolutions, channels-last LayerNorm through `permute`, layer scale,
squeeze-excitation) and recurrent networks (an `nn.Embedding` first layer, LSTM/GRU hidden units
with their gates). See docs/guides/alignment.md.

References:
    Ainsworth, Hayase, Srinivasa, Git Re-Basin: Merging Models modulo Permutation Symmetries
    (ICLR 2023).
    Entezari, Sedghi, Saukh, Neyshabur, The Role of Permutation Invariance in Linear Mode
    Connectivity of Neural Networks (ICLR 2022).
    Frankle, Dziugaite, Roy, Carbin, Linear Mode Connectivity and the Lottery Ticket Hypothesis
    (ICML 2020).

The package: `spec` (PermutationSpec and applying permutations), `trace` (reading the
structure from a model: tracing, the graph analysis of `graph` with its rules in `layers`,
`functions` and `shapes`, the atoms of `axes`, the operation tables of `ops`, and `groups` that
turns atoms into a spec), `solvers` (weight matching) and `barriers` (raw and aligned barriers).
"""

from ..surface import barrier
from .barriers import BUFFERS, AlignedBarrierResult, BarrierCurve, aligned_barrier
from .solvers import AlignResult, align_weights
from .spec import (
    PermutationSpec,
    apply_permutation,
    identity_permutation,
    random_permutation,
)
from .trace import example_input, permutation_spec

__all__ = ["BUFFERS", "AlignResult", "AlignedBarrierResult", "BarrierCurve", "PermutationSpec",
           "align_weights", "aligned_barrier", "apply_permutation", "barrier", "example_input",
           "identity_permutation", "permutation_spec", "random_permutation"]
