//! (being written) Prices per model and the cost of an answer.
