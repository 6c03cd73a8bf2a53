//! What rkube's API clients (the scheduler, the controller manager, later the node agent)
//! share: leader election through a Lease ([`leader`]) and events recorded as upstream's
//! recorder does, repeats aggregated into one event's count ([`events`]).

pub mod events;
pub mod leader;
