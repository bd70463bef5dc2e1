#!/usr/bin/env python3
"""Floating-point operations of an exact trNTK of a BERT-family classifier, as mscope contracts it.

    python3 tools/anchors/trntk_flops.py [--n 8192] [--tokens 12] [--classes 2] [--rate GFLOPS ...]

Counts the multiply-adds of the pair contractions of `mscope ntk --kind trntk` (the kernel of
every parameter, `C` classes side by side in each output-gradient row) for N texts of T tokens
each, BERT-base shapes by default (12 layers, hidden 768, intermediate 3072), one FLOP = one
multiply or one add (a multiply-add is 2):

- each encoder Linear (d_in → d_out) by the token-level form `Σ_{t,s}⟨δ_t,δ_s⟩⟨a_t,a_s⟩`:
  T²·(d_in + C·d_out) multiply-adds per pair (the two Gram blocks; the Hadamard product and its sum,
  T² more, are counted too), or the materialised form C·d_out·(d_in + 1) where that is cheaper
  (the rule `SeqForm::choose` applies; at 12 tokens every BERT-base Linear is token-level);
- the head's pooler and classifier on one row per text: (d_in + C·d_out) each;
- the embedding tables: one C·h dot product per token id two texts share (positions: T of them;
  token type: 1; words: at most T, counted as T);
- biases and LayerNorm γ/β, materialised per text: C·(their length) per pair.

A square kernel computes the upper triangle, N(N+1)/2 pairs (the mirror is free); the forward and
backward passes that produce the factors (≈ 6·P·T FLOPs per text and class, P the Linear
weights; attention's T² terms are small at these lengths) are counted separately. With `--rate`, prints the time the count takes at each sustained rate
(GFLOP/s).
"""

import argparse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--rate", type=float, nargs="*", default=[],
                    help="sustained rates in GFLOP/s to turn the count into time")
    a = ap.parse_args()
    t, c, h, f = a.tokens, a.classes, a.hidden, a.intermediate

    linears = [(h, 3 * h), (h, h), (h, f), (f, h)]  # QKV, attention output, FFN up, FFN down
    per_layer = 0
    for d_in, d_out in linears:
        tokens = t * t * (d_in + c * d_out) + t * t
        materialised = c * d_out * (d_in + 1)
        per_layer += min(tokens, materialised)
    encoder = a.layers * per_layer
    head = (h + c * h) + (h + c * c)
    embeddings = (t + 1 + t) * c * h
    vectors = a.layers * (3 * h + h + 2 * h + f + h + 2 * h) + 2 * h + h + c
    per_pair_macs = encoder + head + embeddings + c * vectors
    pairs_square = a.n * (a.n + 1) // 2
    flops = 2 * per_pair_macs * pairs_square
    params = (a.vocab + a.positions + 2 + 2) * h + a.layers * (4 * h * h + 2 * h * f + 9 * h + f) \
        + h * h + h + c * h + c
    linear_weights = a.layers * (4 * h * h + 2 * h * f) + h * h + c * h
    factors = 6 * linear_weights * t * c * a.n

    print(f"trNTK of a {a.layers}-layer h={h} classifier, {c} classes, N={a.n} texts of "
          f"{t} tokens ({params / 1e6:.1f} M parameters)")
    print(f"  per pair: {per_pair_macs:.4g} multiply-adds (encoder Linears {encoder:.4g}, "
          f"head {head}, embeddings {embeddings}, vectors {c * vectors})")
    print(f"  pairs (upper triangle): {pairs_square:.4g}; all N² pairs: {a.n * a.n:.4g}")
    print(f"  contraction: {flops:.3e} FLOP (upper triangle), {2 * per_pair_macs * a.n * a.n:.3e} "
          f"FLOP (all N² pairs)")
    print(f"  factors (forward + backward per text and class, ≈ 6·P·T, P = {linear_weights / 1e6:.1f} M "
          f"Linear weights): {factors:.3e} FLOP")
    for rate in a.rate:
        seconds = (flops + factors) / (rate * 1e9)
        print(f"  at {rate:g} GFLOP/s: {seconds:.4g} s ({seconds / 3600:.3g} h)")


if __name__ == "__main__":
    main()
