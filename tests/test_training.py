"""Training with INT4 layers: converges near float, resumes exactly from orbax, jits with donation."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

# Every test here trains: left out of the default run, run by .ci/run (pytest -m slow).
pytestmark = pytest.mark.slow

from int4jax import Int4Config
from int4jax.nn.transformer import EncoderClassifier, cross_entropy

VOCAB, LENGTH, CLASSES = 15, 16, 3


def make_task(n, seed):
  """Tokens in three groups of five; the label is the group that occurs most often."""
  tokens = jax.random.randint(jax.random.key(seed), (n, LENGTH), 0, VOCAB)
  counts = jnp.stack([jnp.sum((tokens // 5) == g, axis=1) for g in range(CLASSES)], axis=1)
  return tokens, jnp.argmax(counts, axis=1)


def make_model(config):
  return EncoderClassifier(vocab_size=VOCAB, num_classes=CLASSES, max_len=LENGTH, dim=64,
                           num_heads=4, mlp_dim=128, num_layers=2, config=config)


def make_train(model, lr=3e-3):
  tx = optax.adam(lr)

  def init(tokens):
    params = model.init(jax.random.key(0), tokens)["params"]
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  def step(state, tokens, labels, key):
    qkey = jax.random.fold_in(key, state["step"])

    def loss_fn(p):
      logits = model.apply({"params": p}, tokens, rngs={"quant": qkey})
      return cross_entropy(logits, labels)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt,
            "step": state["step"] + 1}, loss

  return init, step


def run(state, step, data, first, last, batch=32, key=jax.random.key(1)):
  tokens, labels = data
  losses = []
  for i in range(first, last):
    lo = (i * batch) % tokens.shape[0]
    state, loss = step(state, tokens[lo:lo + batch], labels[lo:lo + batch], key)
    losses.append(float(loss))
  return state, losses


def test_int4_training_tracks_float_training():
  data = make_task(1024, 0)
  test_tokens, test_labels = make_task(512, 1)
  results = {}
  for name, config in [("float", None), ("int4", Int4Config()), ("paper", Int4Config.paper())]:
    model = make_model(config)
    init, step = make_train(model)
    state, losses = run(init(data[0][:32]), jax.jit(step), data, 0, 300)
    logits = model.apply({"params": state["params"]}, test_tokens)
    acc = float(jnp.mean(jnp.argmax(logits, 1) == test_labels))
    results[name] = (np.mean(losses[-30:]), acc)
    assert np.all(np.isfinite(losses)), name
  for name, (loss, acc) in results.items():  # shown with pytest -s (experiments/results/)
    print(f"{name}: mean loss of the last 30 steps {loss:.4f}, test accuracy {acc:.4f}")
  fp_loss, fp_acc = results["float"]
  assert results["float"][1] > 0.7, results  # the task is learnable at this size
  for name in ("int4", "paper"):
    loss, acc = results[name]
    assert loss < 1.5 * fp_loss + 0.05, results  # stated factor: 1.5x float (+0.05 nats)
    assert acc > fp_acc - 0.1, results


def test_lsq_scales_are_trained_by_the_main_optimizer():
  data = make_task(64, 0)
  model = make_model(Int4Config.paper())
  init, step = make_train(model)
  state0 = init(data[0][:32])
  state, _ = run(state0, jax.jit(step), data, 0, 3)
  q0 = state0["params"]["layer_0"]["attn"]["query"]["Int4DotGeneral_0"]["quant"]
  q1 = state["params"]["layer_0"]["attn"]["query"]["Int4DotGeneral_0"]["quant"]
  assert float(q0["x_scale"]) != float(q1["x_scale"])
  assert float(q0["kernel_scale"]) != float(q1["kernel_scale"])


def test_jit_with_donated_state_equals_plain_jit():
  data = make_task(128, 0)
  init, step = make_train(make_model(Int4Config()))
  plain, _ = run(init(data[0][:32]), jax.jit(step), data, 0, 4)
  donated, _ = run(init(data[0][:32]), jax.jit(step, donate_argnums=(0,)), data, 0, 4)
  chex.assert_trees_all_equal(plain, donated)


def test_orbax_round_trip_resumes_bit_identically(tmp_path):
  data = make_task(256, 0)
  init, step = make_train(make_model(Int4Config.paper()))
  step = jax.jit(step)
  straight, straight_losses = run(init(data[0][:32]), step, data, 0, 12)

  first, losses_a = run(init(data[0][:32]), step, data, 0, 6)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "step6", first)
  del first
  with ocp.StandardCheckpointer() as ckpt:
    template = jax.eval_shape(lambda: init(data[0][:32]))
    restored = ckpt.restore(tmp_path / "step6", template)
  resumed, losses_b = run(restored, step, data, 6, 12)
  assert losses_a + losses_b == straight_losses
  chex.assert_trees_all_equal(resumed, straight)
