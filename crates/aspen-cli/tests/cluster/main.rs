//! Multi-process cluster tests: real `aspen node` processes, each in its own network
//! namespace (when run as root), driven through the real client library.

mod bad_input;
mod basic;
mod coord;
mod coord_more;
mod faults;
mod linearizable;
mod membership;
mod queue;
mod security;
