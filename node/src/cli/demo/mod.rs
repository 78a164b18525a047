//! `halley-node demo`: three nodes on loopback, a service deployed, upgraded under load, a bad
//! release rolled back ([`run`]); its paced clients ([`load`]) and the HTTP service it deploys
//! ([`service`], the hidden `demo-service` command).

pub mod load;
pub mod run;
pub mod service;
