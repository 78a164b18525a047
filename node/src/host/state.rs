//! A service's state on this node: the answers to [`StateRequest`]s (snapshot and verify,
//! migrate, contract, list, restore), from the CLI or from a rollout coordinator.
//!
//! ## Guarantees
//! - Commands (`backup`, `restore`, `verify`, `migrate`, `contract`) run from the release's
//!   directory with the environment its slots get (`env`, `HALLEY_SERVICE_DATA`, ...), as the
//!   service's `user` if it has one, seeing what its slots see ([`crate::host::view`]).
//! - `migrate` and `contract` run at most once per release on a node: a record in the service's
//!   directory says which releases already ran them, so a retried deploy does not migrate twice.
//!   The check, the run and the record happen under one node-wide guard, and the record is
//!   written crash-safely, so two requests at once still run the command once.
//! - A restore stops the service's slots first (nothing writes during it), checks the backup's
//!   hashes before touching anything, and starts the committed release again afterwards, also
//!   when the restore failed.
//!
//! ## Non-goals
//! Deciding when to snapshot or migrate (the rollout coordinator does, in [`crate::rollout::state_flow`]).

use std::path::PathBuf;
use std::time::Duration;

use halley_proto::deploy::{Color, ReleaseVersion, Step};
use halley_proto::disk::ServiceRecord;
use halley_proto::message::{ErrorKind, ErrorReply, StateReply, StateRequest};
use halley_proto::spec::{ServiceName, ServiceSpec, StateSpec};

use crate::clock::wall_ms;
use crate::error::error_reply;
use crate::host::backups::{Backups, Hooks, Snapshot};
use crate::host::process::Launch;
use crate::host::services::Services;

type Reply<T> = Result<T, ErrorReply>;

/// What state work on one service needs: the release whose commands run, and where.
struct Context {
    record: ServiceRecord,
    spec: ServiceSpec,
    data: PathBuf,
    hooks: Hooks,
}

impl Context {
    fn state(&self, service: &ServiceName) -> Reply<&StateSpec> {
        self.spec.state.as_ref().ok_or_else(|| {
            error_reply(
                ErrorKind::BadRequest,
                format!(
                    "service {service} has no [service.{service}.state] table in its release's spec; add one (see docs/state.md)"
                ),
            )
        })
    }
}

/// State work on this node's services.
struct State<'a> {
    services: &'a Services,
}

/// Answers a state request for a service on this node.
pub async fn answer(services: &Services, request: StateRequest) -> Reply<StateReply> {
    // An upgrade waits for state work to end, and takes none once it has begun.
    let _op = services.state_op()?;
    State { services }.answer(request).await
}

impl State<'_> {
    async fn answer(&self, request: StateRequest) -> Reply<StateReply> {
        match request {
            StateRequest::Snapshot {
                service,
                spec,
                for_release,
            } => self.snapshot(&service, spec.map(|s| *s), for_release).await,
            StateRequest::Migrate { service, version } => {
                self.run_once(&service, &version, "migrate").await
            }
            StateRequest::Contract { service, version } => {
                self.run_once(&service, &version, "contract").await
            }
            StateRequest::List(service) => {
                let backups = Backups::new(self.services.data_dir().root());
                Ok(StateReply::Backups(backups.list(&service)))
            }
            StateRequest::Restore { service, id } => self.restore(&service, &id).await,
        }
    }

    /// The release `version` (else the committed one) of a service on this node.
    async fn context(
        &self,
        service: &ServiceName,
        version: Option<&ReleaseVersion>,
    ) -> Reply<Option<Context>> {
        let Some(handle) = self.services.handle(service).await else {
            return Ok(None);
        };
        let record: ServiceRecord = self
            .services
            .data_dir()
            .read_record(&crate::host::handle::record_name(service))
            .map_err(|e| error_reply(ErrorKind::Internal, e.to_string()))?;
        drop(handle);
        let Some(version) = version.or(record.committed.as_ref()).cloned() else {
            return Ok(None);
        };
        let Some(entry) = record
            .releases
            .iter()
            .find(|r| r.version == version)
            .cloned()
        else {
            return Err(error_reply(
                ErrorKind::NotFound,
                format!("release {version} of service {service} is not prepared on this node"),
            ));
        };
        let releases = self.services.releases();
        let data = releases.service_dir(service).join("data");
        let release_dir = releases.release_dir(service, &version);
        let launch = Launch {
            service: service.clone(),
            version: version.clone(),
            slot: Color::Blue,
            port: 0,
            release_dir: release_dir.clone(),
            data_dir: data.clone(),
            log: releases.service_dir(service).join("logs").join("state.log"),
            spec: entry.spec.clone(),
            node_root: self.services.data_dir().root().to_path_buf(),
            node: self.services.node().clone(),
        };
        let env = crate::host::process::environment(&launch)
            .into_iter()
            .filter(|(k, _)| k != "PORT" && k != "HALLEY_SLOT")
            .collect();
        std::fs::create_dir_all(&data).map_err(|e| {
            error_reply(
                ErrorKind::Internal,
                format!("cannot create {}: {e}", data.display()),
            )
        })?;
        let secrets = entry.spec.env.values().map(|v| v.0.clone()).collect();
        let user = crate::host::process::confinement(&launch)
            .map_err(|e| error_reply(ErrorKind::BadRequest, e.to_string()))?;
        if let Some(user) = &user {
            crate::host::process::hand_over(&launch, user)
                .map_err(|e| error_reply(ErrorKind::Internal, e.to_string()))?;
        }
        Ok(Some(Context {
            record,
            spec: entry.spec,
            data,
            hooks: Hooks {
                cwd: release_dir,
                env,
                secrets,
                user,
            },
        }))
    }

    async fn snapshot(
        &self,
        service: &ServiceName,
        spec: Option<ServiceSpec>,
        for_release: Option<ReleaseVersion>,
    ) -> Reply<StateReply> {
        let Some(ctx) = self.context(service, None).await? else {
            return Ok(StateReply::Snapshot {
                backup: None,
                note: format!(
                    "no snapshot: service {service} has no committed release on this node yet, so it has no data to protect"
                ),
            });
        };
        let spec = spec.unwrap_or_else(|| ctx.spec.clone());
        let state = match &spec.state {
            Some(state) => state.clone(),
            None => ctx.state(service)?.clone(),
        };
        if !state.has_snapshot() {
            return Ok(StateReply::Snapshot {
                backup: None,
                note: "no snapshot: [state] names no sqlite, dirs or backup command".into(),
            });
        }
        let backups = Backups::new(self.services.data_dir().root());
        let (service, node) = (service.clone(), self.services.node().clone());
        let release = ctx.record.committed.clone();
        let committed = release.clone();
        tokio::task::spawn_blocking(move || {
            let manifest = backups
                .create(&Snapshot {
                    service: &service,
                    node: &node,
                    spec: &state,
                    service_data: &ctx.data,
                    release,
                    for_release,
                    hooks: &ctx.hooks,
                    now_ms: wall_ms(),
                })
                .map_err(|e| {
                    error_reply(ErrorKind::CheckFailed, format!("snapshot failed: {e}"))
                })?;
            let note = backups
                .verify(&service, &manifest.id, &state, &ctx.hooks)
                .map_err(|e| {
                    error_reply(
                        ErrorKind::CheckFailed,
                        format!(
                            "backup {} was taken but does not restore cleanly: {e}",
                            manifest.id
                        ),
                    )
                })?;
            let pruned = backups.prune(&service, state.keep_backups, committed.as_ref());
            let note = if pruned.is_empty() {
                note
            } else {
                format!("{note}; pruned {}", pruned.join(", "))
            };
            Ok(StateReply::Snapshot {
                backup: Some(manifest),
                note,
            })
        })
        .await
        .map_err(|e| error_reply(ErrorKind::Internal, format!("snapshot task failed: {e}")))?
    }

    /// Runs `migrate` or `contract` of `version` once on this node.
    async fn run_once(
        &self,
        service: &ServiceName,
        version: &ReleaseVersion,
        what: &'static str,
    ) -> Reply<StateReply> {
        let Some(ctx) = self.context(service, Some(version)).await? else {
            return Err(error_reply(
                ErrorKind::NotFound,
                format!("service {service} is not deployed on this node"),
            ));
        };
        let state = ctx.state(service)?;
        let argv = match what {
            "migrate" => state.migrate.clone(),
            _ => state.contract.clone(),
        }
        .ok_or_else(|| {
            error_reply(
                ErrorKind::BadRequest,
                format!("release {version} of service {service} has no {what} command"),
            )
        })?;
        let ledger_name = format!(
            "services/{service}/{}",
            if what == "migrate" {
                "migrated"
            } else {
                "contracted"
            }
        );
        // Check, run and record under one guard: a second request waits and then finds it done.
        let _held = self.services.ledgers().await;
        let data_dir = self.services.data_dir().clone();
        let ledger = data_dir.file(&ledger_name);
        let done = std::fs::read_to_string(&ledger).unwrap_or_default();
        if done.lines().any(|l| l == version.as_str()) {
            return Ok(StateReply::Ran {
                already: true,
                output: String::new(),
            });
        }
        let (hooks, version) = (ctx.hooks, version.clone());
        tokio::task::spawn_blocking(move || {
            let output = hooks
                .run(what, &argv, &[])
                .map_err(|e| error_reply(ErrorKind::CheckFailed, e.to_string()))?;
            let mut recorded = done;
            recorded.push_str(version.as_str());
            recorded.push('\n');
            // Crash-safe: a torn ledger would lose the record and run the command again.
            data_dir
                .write_file(&ledger_name, recorded.as_bytes(), 0o600)
                .map_err(|e| {
                    error_reply(
                        ErrorKind::Internal,
                        format!(
                            "the {what} command ran, but recording that in {} failed: {e}",
                            ledger.display()
                        ),
                    )
                })?;
            Ok(StateReply::Ran {
                already: false,
                output,
            })
        })
        .await
        .map_err(|e| error_reply(ErrorKind::Internal, format!("{what} task failed: {e}")))?
    }

    async fn restore(&self, service: &ServiceName, id: &str) -> Reply<StateReply> {
        let Some(ctx) = self.context(service, None).await? else {
            return Err(error_reply(
                ErrorKind::NotFound,
                format!("service {service} has no committed release on this node to restore into"),
            ));
        };
        let state = ctx.state(service)?.clone();
        let backups = Backups::new(self.services.data_dir().root());
        // Refuse a corrupt backup before stopping anything.
        backups
            .check(service, id)
            .map_err(|e| error_reply(ErrorKind::BadRequest, e.to_string()))?;
        let handle = self.services.handle(service).await.ok_or_else(|| {
            error_reply(ErrorKind::NotFound, format!("service {service} is gone"))
        })?;
        let stopped = handle.quiesce().await?;
        for (pid, ticks) in stopped {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while crate::host::process::same_process(pid, ticks)
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (b, s, i) = (backups.clone(), service.clone(), id.to_owned());
        let restored =
            tokio::task::spawn_blocking(move || b.restore(&s, &i, &state, &ctx.data, &ctx.hooks))
                .await
                .map_err(|e| error_reply(ErrorKind::Internal, format!("restore task failed: {e}")));
        // Whatever happened, the committed release serves again.
        let woke = handle.step(None, Step::Revert).await;
        let manifest = restored?.map_err(|e| {
            error_reply(
                ErrorKind::CheckFailed,
                format!("restoring backup {id} failed: {e}"),
            )
        })?;
        woke.map_err(|e| {
            error_reply(
                e.kind,
                format!(
                    "backup {id} was restored, but the service did not start again: {}",
                    e.message
                ),
            )
        })?;
        Ok(StateReply::Restored(manifest))
    }
}
