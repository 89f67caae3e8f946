"""Model tests: free Keras state between tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Keep TF memory flat across many model builds."""
    import tensorflow as tf

    yield
    tf.keras.backend.clear_session()
