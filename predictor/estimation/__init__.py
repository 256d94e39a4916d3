"""From kernels to a latency: the measured table (table), per-op-type regressors (regressors), the learned overhead
(overhead) and model context (context), training them (training), the sum (estimate), a model prepared for many
configs and ranking (prepared), the typed answers (results) and holding predictions against measurements
(validation)."""
