"""benchmarks.muon_step: the Newton–Schulz FLOPs its roofline divides by."""

from benchmarks import muon_step


def test_ns_flops_counts_each_matrix_of_the_rows_view():
  d, layers, steps = 8, 2, 5
  grads = muon_step.transformer_matrices(d, layers)
  whole, split = (muon_step.ns_flops(grads, steps, split_qkv=s) for s in (False, True))
  # Per layer: qkv (d, 3d) 14d³, attn_out 6d³, fc1 and fc2 (d, 4d) 18d³ each,
  # per iteration; q, k, v apart 3 · 6d³ = 18d³ instead of 14d³.
  assert whole == layers * steps * (14 + 6 + 18 + 18) * d**3
  assert split - whole == layers * steps * 4 * d**3


def test_only_gradtxs_default_view_rows_split_qkv():
  assert not muon_step.splits_qkv(muon_step.ANCHOR)
  assert not muon_step.splits_qkv("gradtx gram, qkv whole @HEAD~1")
  assert muon_step.splits_qkv("gradtx standard bf16")
