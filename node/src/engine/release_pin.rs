//! The release pin: which spec and artifact a rollout's release is.
//!
//! A rollout's state carries the pin its admin coordinator computed when it started
//! ([`RolloutState::release`]). A host that missed the rollout, or a coordinator resuming it,
//! fetches the release from a peer and keeps it only if it matches the pin; without a pin it
//! takes it only from an admin. Workers serve the service too, and a worker's word about a
//! release must not become what other hosts run.
//!
//! ## Guarantees
//! - The pin covers the whole spec (command, environment, hooks, hosts), the artifact's SHA-256
//!   and the artifact's file name; changing any of them changes the pin.
//!
//! ## Non-goals
//! It does not check the artifact's bytes: the release store does that against the SHA-256.

use halley_proto::role::Role;
use halley_proto::rollout::RolloutState;
use halley_proto::spec::ServiceSpec;

use crate::engine::tokens::sha256;

/// Domain separation, so a pin is never another digest of the same bytes.
const PIN_DOMAIN: &[u8] = b"halley release pin v1\0";

/// The pin of a release: SHA-256 over the spec's codec bytes (without a default `log_max`, as
/// pins were before it), the artifact digest and the file name. `None` only if the spec cannot be encoded (over the codec's size limit).
pub fn pin(spec: &ServiceSpec, artifact_sha256: &[u8; 32], file_name: &str) -> Option<[u8; 32]> {
    let spec_bytes = halley_proto::codec::spec_digest_bytes(spec).ok()?;
    let mut input =
        Vec::with_capacity(PIN_DOMAIN.len() + 8 + spec_bytes.len() + 32 + file_name.len());
    input.extend_from_slice(PIN_DOMAIN);
    input.extend_from_slice(&(spec_bytes.len() as u64).to_be_bytes());
    input.extend_from_slice(&spec_bytes);
    input.extend_from_slice(artifact_sha256);
    input.extend_from_slice(file_name.as_bytes());
    Some(sha256(&input))
}

/// Who offered a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offerer {
    /// This node's own store: what it runs is its own to trust.
    Itself,
    /// A peer, with the role its certificate showed (`None`: not seen).
    Peer(Option<Role>),
}

/// Whether `state`'s release as `from` offered it may be taken: it matches the rollout's pin,
/// or the rollout has none and it comes from this node's store or an admin (whose word about a
/// release is as good as a coordinator's).
pub fn may_take(
    state: &RolloutState,
    offered: (&ServiceSpec, &[u8; 32], &str),
    from: Offerer,
) -> bool {
    let (spec, artifact, file_name) = offered;
    match state.release {
        Some(expected) => pin(spec, artifact, file_name) == Some(expected),
        None => matches!(from, Offerer::Itself | Offerer::Peer(Some(Role::Admin))),
    }
}

#[cfg(test)]
mod tests {
    use halley_proto::spec::Secret;

    use super::*;

    fn spec() -> ServiceSpec {
        toml::from_str("command = [\"./app\"]\nlisten = \":8080\"\nenv = { MARK = \"genuine\" }\n")
            .unwrap()
    }

    fn pinned(spec: &ServiceSpec) -> RolloutState {
        RolloutState {
            release: pin(spec, &[7; 32], "app"),
            ..crate::scenario::rollout_state(Vec::new())
        }
    }

    #[test]
    fn the_pin_covers_the_spec_the_artifact_and_its_name() {
        let genuine = spec();
        let base = pin(&genuine, &[7; 32], "app").unwrap();
        assert_eq!(pin(&spec(), &[7; 32], "app"), Some(base), "stable");
        let mut doctored = spec();
        doctored
            .env
            .insert("MARK".into(), Secret("doctored".into()));
        assert_ne!(pin(&doctored, &[7; 32], "app"), Some(base));
        let mut other_command = spec();
        other_command.command = vec!["./evil".into()];
        assert_ne!(pin(&other_command, &[7; 32], "app"), Some(base));
        assert_ne!(pin(&genuine, &[8; 32], "app"), Some(base));
        assert_ne!(pin(&genuine, &[7; 32], "app2"), Some(base));
    }

    #[test]
    fn a_pinned_release_is_taken_when_it_matches_whoever_offers_it() {
        let genuine = spec();
        let state = pinned(&genuine);
        let mut doctored = spec();
        doctored.env.insert("MARK".into(), Secret("x".into()));
        for from in [
            Offerer::Itself,
            Offerer::Peer(Some(Role::Admin)),
            Offerer::Peer(Some(Role::Worker)),
            Offerer::Peer(None),
        ] {
            assert!(may_take(&state, (&genuine, &[7; 32], "app"), from));
            assert!(!may_take(&state, (&doctored, &[7; 32], "app"), from));
            assert!(!may_take(&state, (&genuine, &[9; 32], "app"), from));
        }
    }

    #[test]
    fn an_unpinned_release_is_taken_only_from_this_node_or_an_admin() {
        let genuine = spec();
        let state = crate::scenario::rollout_state(Vec::new());
        let offer = (&genuine, &[7; 32], "app");
        assert!(may_take(&state, offer, Offerer::Itself));
        assert!(may_take(&state, offer, Offerer::Peer(Some(Role::Admin))));
        assert!(!may_take(&state, offer, Offerer::Peer(Some(Role::Worker))));
        assert!(!may_take(
            &state,
            offer,
            Offerer::Peer(Some(Role::Observer))
        ));
        assert!(!may_take(&state, offer, Offerer::Peer(None)));
    }
}
