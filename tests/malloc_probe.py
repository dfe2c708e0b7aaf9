"""Entry point for tests/test_allocator.py: minor page faults of reusing 1 MiB buffers under glibc malloc after a
``from_generator`` iterator exists, either bare ('bare') or wrapped in the pipeline's DataIterator ('pipeline')."""

import json
import resource
import sys
import threading

import numpy as np
import tensorflow as tf

from lamp_jax.data import pipeline


def main(mode: str) -> None:
  def generator():
    yield np.int32(0)

  dataset = tf.data.Dataset.from_generator(generator, output_signature=tf.TensorSpec((), tf.int32))
  if mode == "pipeline":
    iterator = pipeline.DataIterator(dataset, statistics=None, weights=None, skips=None, names=["probe"],
                                     per_process_batch=1)
  else:
    iterator = dataset.as_numpy_iterator()
  next(iterator)

  def allocate():  # on a thread of its own (its own glibc arena), like tf.data's map threads
    for _ in range(50):
      np.ones(1 << 20, np.uint8)  # allocated, touched, freed: 256 page faults each time if trimmed / unmapped

  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  thread = threading.Thread(target=allocate)
  thread.start()
  thread.join()
  print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))


if __name__ == "__main__":
  main(sys.argv[1])
