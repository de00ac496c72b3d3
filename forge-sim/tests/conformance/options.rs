//! POST /sdapi/v1/options: which keys Forge applies, in which order, and what each costs.
