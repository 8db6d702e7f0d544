"""Only for the embedded demo: speech synthesis (espeak-ng), sentences, degradations, the demo
corpus and the tiny models. Nothing outside the demo's own stages, the tests and the benchmarks
imports it."""
