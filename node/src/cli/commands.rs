//! The `halley-node` command line (clap). This is the only place that uses anyhow: errors from the
//! library are shown with their full context and the process exits non-zero.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use halley_proto::deploy::ReleaseVersion;
use halley_proto::message::{AdminRequest, AdminResponse};
use halley_proto::spec::ServiceName;
use halley_proto::{JoinToken, NodeName, Role};

use crate::cli::backup as backup_cli;
use crate::cli::demo::run as demo;
use crate::cli::deploy::{self, DeployOptions};
use crate::cli::render as status;
use crate::cli::{config, duration};
use crate::cluster::init::{self, InitOptions};
use crate::cluster::join::{self, JoinOptions};
use crate::daemon::admin;
use crate::daemon::run::{self as daemon, RunOptions};
use crate::engine::tokens;
use crate::store::datadir::DataDir;

/// The default mesh port.
pub const DEFAULT_PORT: u16 = 7946;

/// `run`'s default `--service-address`, as the start hints of `init` and `join` print it.
const SERVICE_ADDRESS_HINT: &str = "0.0.0.0";

/// Halley: a zero-downtime deploy mesh for small stacks.
#[derive(Debug, Parser)]
#[command(name = "halley-node", version, about, long_about = None)]
pub struct Cli {
    /// The node's data dir [default: $HALLEY_DATA_DIR, else /var/lib/halley as root, else
    /// ~/.local/share/halley]. Several nodes can share a machine with different data dirs.
    #[arg(long, global = true, env = "HALLEY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a new cluster: make its CA and this node's identity, and print a join token (last line).
    Init(InitArgs),
    /// Join a cluster with a token from `init` or `token create`; then start the node with `run`.
    Join(JoinArgs),
    /// Run the node daemon (mesh, gossip, admin socket) until SIGTERM, SIGINT or `leave`.
    Run(RunArgs),
    /// Show every node as this node sees it.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Leave the cluster gracefully and stop the local daemon (peers mark it left at once).
    Leave,
    /// Remove NODE from the cluster for good (admin): every member refuses its certificate from
    /// now on, `status` shows it `removed`, and its data dir refuses to run again.
    Remove {
        /// The node to remove.
        node: NodeName,
        /// Remove it even if this node knows no member of that name (one dead for over an
        /// hour is forgotten).
        #[arg(long)]
        force: bool,
    },
    /// Drop a dead, left or removed NODE from `status` (admin), here and on every live member.
    Forget {
        /// The node to forget.
        node: NodeName,
    },
    /// Mark a node as draining (this one, or NODE): gossiped, shown by `status`, and
    /// `GET /.halley/ready` on its entry points answers 503.
    Drain {
        /// The node [default: this one].
        node: Option<NodeName>,
    },
    /// Clear a node's draining mark (this one, or NODE).
    Undrain {
        /// The node [default: this one].
        node: Option<NodeName>,
    },
    /// Roll a release of a service out across its hosts, one batch at a time, coordinated by this
    /// node: drain, deploy (start in the idle slot, check, flip, drain the old slot), undrain,
    /// bake while watching regressions; roll every touched host back when they cross a threshold.
    Deploy(DeployArgs),
    /// Put every host of a service back on its previous release (or --to VERSION), all at once
    /// (a flip where that slot is still warm).
    Rollback {
        /// The service.
        service: ServiceName,
        /// The release to go back to [default: each host's previous committed release].
        #[arg(long)]
        to: Option<ReleaseVersion>,
        /// Also restore, on every node that took one, the snapshot taken before the deploy being
        /// rolled back (writes since then are lost; asks first).
        #[arg(long)]
        restore_data: bool,
        /// Do not ask before restoring data.
        #[arg(long)]
        yes: bool,
    },
    /// Services across the cluster: `service remove`.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// A service's state backups: list, create, restore (this node, or --node).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Rollouts in progress or finished, as this node knows them (from gossip).
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// A service's rollouts: version, time, coordinator, outcome, why.
    History {
        /// The service.
        service: ServiceName,
    },
    /// A service's slot logs (stdout and stderr) on this node or --node: the serving release's,
    /// or --release's.
    Logs(crate::cli::logs::LogsArgs),
    /// Replace this node's daemon with a new binary without a refused request: its sockets and
    /// services are handed over, the old daemon finishes its requests and exits.
    Upgrade(crate::cli::upgrade::UpgradeArgs),
    /// Show this node's services: slots, releases, health and request signals.
    Services {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print this build's version, wire protocol, disk format and architecture on one line
    /// (`upgrade` reads it from the new binary: keep its shape).
    Version,
    /// Print a shell completion script: `halley-node completions bash > /etc/bash_completion.d/halley-node`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// A throwaway 3-node cluster on loopback: deploy, roll out a good release under load, then
    /// a regressing one that the cluster rolls back; ends with a summary.
    Demo,
    /// The demo's service (run by the demo's nodes, not by hand).
    #[command(hide = true)]
    DemoService,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Remove a service from every host (admin): its slots stop, its entry point closes, its
    /// releases, logs and record go. A host that is down removes it when it is back. Its data
    /// directory and backups stay unless --purge.
    Remove {
        /// The service.
        service: ServiceName,
        /// Delete its data directory and backups on every host too (asks first).
        #[arg(long)]
        purge: bool,
        /// Do not ask before deleting data.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// The service's backups: id, time, release, size, files, SHA-256, why.
    List {
        /// The service.
        service: ServiceName,
        /// The node [default: this one].
        #[arg(long)]
        node: Option<NodeName>,
    },
    /// Take a backup now (by the committed release's [state] table), verify it restores, and
    /// prune to `keep_backups`.
    Create {
        /// The service.
        service: ServiceName,
        /// The node [default: this one].
        #[arg(long)]
        node: Option<NodeName>,
    },
    /// Restore a backup: its hashes are checked, the service stops on that node, its data is
    /// replaced, the committed release starts again. Writes since the backup are lost.
    Restore {
        /// The service.
        service: ServiceName,
        /// The backup id (from `backup list`).
        id: String,
        /// The node [default: this one].
        #[arg(long)]
        node: Option<NodeName>,
        /// Do not ask first.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Show the newest rollout of each service (or of one), host by host.
    Status {
        /// The service [default: all].
        service: Option<ServiceName>,
    },
    /// Stop the service's unfinished (or paused) rollout and roll back every host it touched;
    /// hosts it did not reach stay as they are. Works from any admin node, whoever coordinates it.
    Abort {
        /// The service.
        service: ServiceName,
    },
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The service (a [service.NAME] table in the config).
    service: ServiceName,
    /// Continue (or roll back) the service's unfinished rollout from its journal, taking it over
    /// from a dead coordinator; no config or artifact needed.
    #[arg(long)]
    resume: bool,
    /// With --resume: take the rollout over even from a coordinator that looks alive.
    #[arg(long, requires = "resume")]
    force: bool,
    /// Skip hosts that are unreachable on their turn instead of pausing the rollout.
    #[arg(long)]
    skip_unreachable: bool,
    /// Check what the deploy would check (artifact, hosts), print the plan (batches, hosts,
    /// current and new version, state steps, an unfinished rollout) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The config file.
    #[arg(short = 'c', long = "config", default_value = "halley.toml")]
    config: PathBuf,
    /// The release's version (A-Z a-z 0-9 . _ - +).
    #[arg(long, required_unless_present = "resume")]
    version: Option<ReleaseVersion>,
    /// The artifact: a .tar.gz or .tar.zst of the release directory, or a single executable.
    #[arg(long, required_unless_present = "resume")]
    artifact: Option<PathBuf>,
    /// The artifact's expected SHA-256 (64 hex digits); the deploy stops if it differs.
    #[arg(long, value_parser = parse_sha256)]
    sha256: Option<[u8; 32]>,
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    halley_proto::hex::decode_array::<32>(text).ok_or_else(|| {
        format!("{text:?} is not a SHA-256: give 64 hex digits (sha256sum prints them)")
    })
}

#[derive(Debug, Args)]
struct InitArgs {
    /// This node's name (a-z, 0-9, '-'; at most 63 characters).
    #[arg(long)]
    name: NodeName,
    #[command(flatten)]
    addrs: AddrArgs,
    /// Lifetime of the printed token (e.g. 30m, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    token_ttl: Duration,
    /// How many joins the printed token allows: a number, or `unlimited` (until it expires).
    #[arg(long, default_value = "1", value_parser = parse_uses)]
    token_uses: Uses,
    /// The role of the nodes the printed token admits: `worker` (runs services, orders nobody)
    /// or `admin` (may also coordinate rollouts, order peers and issue tokens).
    #[arg(long, default_value = "worker", value_parser = parse_role)]
    token_role: Role,
    /// How long node certificates are valid (e.g. 365d, 90d, 1h; at least 1m). Every node
    /// renews its own through an admin once two thirds of it have passed.
    #[arg(long, default_value = "365d", value_parser = duration::parse)]
    cert_validity: Duration,
}

/// How many joins a token allows (`None`: unlimited until it expires).
#[derive(Debug, Clone, Copy)]
struct Uses(Option<u32>);

fn parse_uses(text: &str) -> std::result::Result<Uses, String> {
    if text == "unlimited" {
        return Ok(Uses(None));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("a token with 0 uses admits nobody; give 1 or more, or 'unlimited'".into()),
        Ok(n) => Ok(Uses(Some(n))),
        Err(_) => Err(format!(
            "{text:?} is not a number of joins; give 1 or more, or 'unlimited'"
        )),
    }
}

/// "1 worker", "3 admins", "any number of workers".
fn admits(uses: Option<u32>, role: Role) -> String {
    match uses {
        Some(1) => format!("1 {role}"),
        Some(n) => format!("{n} {role}s"),
        None => format!("any number of {role}s"),
    }
}

fn parse_role(text: &str) -> std::result::Result<Role, String> {
    match Role::parse(text) {
        Ok(role @ (Role::Admin | Role::Worker)) if text != "node" => Ok(role),
        _ => Err(format!(
            "{text:?} is not a role a token can grant; give worker or admin"
        )),
    }
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The token printed by `init` or `token create` [default: from --token-file, else stdin].
    /// On the command line it shows in `ps` and shell history; prefer --token-file or stdin.
    token: Option<String>,
    /// Read the token from this file (`-`: stdin).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// This node's name (a-z, 0-9, '-'; at most 63 characters).
    #[arg(long)]
    name: NodeName,
    #[command(flatten)]
    addrs: AddrArgs,
}

#[derive(Debug, Args)]
struct AddrArgs {
    /// Where the QUIC mesh endpoint binds (UDP).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// The address other hosts reach this one at [default: --listen when it names an IP].
    #[arg(long)]
    advertise: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Time between gossip rounds.
    #[arg(long, default_value = "250ms", value_parser = duration::parse)]
    gossip_interval: Duration,
    /// The address a service's `listen = ":PORT"` binds on (e.g. 127.0.0.2 to run several nodes
    /// on one machine).
    #[arg(long, default_value = "0.0.0.0")]
    service_address: IpAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Ask the running node for a new join token (an admin node that holds the CA key).
    Create {
        /// Lifetime (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = duration::parse)]
        ttl: Duration,
        /// How many joins it allows: a number, or `unlimited` (until it expires).
        #[arg(long, default_value = "1", value_parser = parse_uses)]
        uses: Uses,
        /// The role of the nodes it admits: `worker` (runs services, orders nobody) or `admin`
        /// (may also coordinate rollouts, order peers and issue tokens; gets the CA key).
        #[arg(long, default_value = "worker", value_parser = parse_role)]
        role: Role,
    },
}

/// Parses arguments, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Run(_));
    if is_daemon {
        // A file-size limit must fail the write that hits it (the deploy then stops cleanly),
        // not kill the node.
        // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    }
    init_logging(is_daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: the library's errors already name
/// their source (`cannot read PATH: No such file…`), so anyhow's chain would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn init_logging(is_daemon: bool) {
    let default = if is_daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person at a terminal: a log file or journald gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_command(data_dir: DataDir, args: RunArgs) -> Result<()> {
    let opts = RunOptions {
        gossip_interval: args.gossip_interval,
        service_address: args.service_address,
        metrics_listen: args.metrics_listen,
    };
    if opts.gossip_interval < Duration::from_millis(10) {
        bail!("--gossip-interval must be at least 10ms");
    }
    daemon::run(data_dir, opts, stop_signal()).await?;
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<()> {
    let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(DataDir::default_root));
    match cli.command {
        Command::Init(args) => init_command(&data_dir, args)?,
        Command::Join(args) => join_command(&data_dir, args).await?,
        Command::Run(args) => run_command(data_dir, args).await?,
        Command::Status { json } => {
            let AdminResponse::Status(report) =
                admin::call(&data_dir, AdminRequest::Status).await?
            else {
                bail!("the node answered a status request with something else");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status::json(&report))?);
            } else {
                print!("{}", status::table(&report));
            }
        }
        Command::Token {
            command: TokenCommand::Create { ttl, uses, role },
        } => {
            let request = AdminRequest::CreateToken {
                ttl_secs: ttl.as_secs().max(1),
                uses: uses.0,
                role,
            };
            match admin::call(&data_dir, request).await? {
                AdminResponse::Token { token, .. } => {
                    eprintln!(
                        "join token (admits {}, valid {}):",
                        admits(uses.0, role),
                        human_secs(ttl.as_secs().max(1))
                    );
                    println!("{token}")
                }
                _ => bail!("the node answered a token request with something else"),
            }
        }
        Command::Remove { node, force } => {
            require_admin(&data_dir, "remove")?;
            let request = AdminRequest::Remove {
                node: node.clone(),
                force,
            };
            let AdminResponse::Removed { told, held_ca } = admin::call(&data_dir, request).await?
            else {
                bail!("the node answered remove with something else");
            };
            println!(
                "removed {node}: every member refuses its certificate from now on (as each hears of it, within seconds)"
            );
            if told {
                println!(
                    "{node} heard it: its daemon stopped and its data dir will not run again; its service processes are still running until you stop them"
                );
            } else {
                println!(
                    "{node} did not answer: it is refused, but if it runs again its data dir does not know it was removed"
                );
            }
            if held_ca {
                println!(
                    "warning: {node} held the cluster CA key, which removing it does not take back: if it was stolen, whoever has it can sign certificates for other names; move your services to a new cluster (halley-node init)"
                );
            }
        }
        Command::Forget { node } => forget_command(&data_dir, node).await?,
        Command::Leave => {
            admin::call(&data_dir, AdminRequest::Leave).await?;
            println!("leaving; the node announces it to its peers and stops");
        }
        Command::Drain { node } => set_draining(&data_dir, node, true).await?,
        Command::Undrain { node } => set_draining(&data_dir, node, false).await?,
        Command::Deploy(args) => {
            require_admin(&data_dir, "deploy")?;
            deploy_command(&data_dir, args).await?
        }
        Command::Rollback {
            service,
            to,
            restore_data,
            yes,
        } => {
            require_admin(&data_dir, "rollback")?;
            if restore_data {
                backup_cli::rollback_with_data(
                    &data_dir,
                    &service,
                    to,
                    yes,
                    &mut std::io::stdout(),
                )
                .await?;
            } else {
                deploy::rollback(&data_dir, &service, to, &mut std::io::stdout()).await?;
            }
        }
        Command::Service { command } => service_command(&data_dir, command).await?,
        Command::Backup { command } => backup_command(&data_dir, command).await?,
        Command::Rollout {
            command: RolloutCommand::Status { service },
        } => {
            let list = deploy::status(&data_dir, service.as_ref()).await?;
            print!("{}", deploy::rollout_table(&list));
        }
        Command::Rollout {
            command: RolloutCommand::Abort { service },
        } => {
            require_admin(&data_dir, "rollout abort")?;
            deploy::abort(&data_dir, &service, &mut std::io::stdout()).await?
        }
        Command::History { service } => {
            let list = deploy::history(&data_dir, &service).await?;
            if list.is_empty() {
                bail!(
                    "no rollout of service {service} is known to this node: check the name ('halley-node services' lists the services here, 'halley-node rollout status' every rollout this node knows of)"
                );
            }
            print!("{}", deploy::history_table(&list));
        }
        Command::Logs(args) => {
            crate::cli::logs::run(&data_dir, args, &mut std::io::stdout()).await?;
        }
        Command::Upgrade(args) => println!("{}", crate::cli::upgrade::run(&data_dir, args).await?),
        Command::Services { json } => {
            let list = deploy::services(&data_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", deploy::table(&list));
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "halley-node",
                &mut std::io::stdout(),
            );
        }
        Command::Version => println!("{}", crate::daemon::upgrade::Build::ours()),
        Command::Demo => demo::run().await?,
        Command::DemoService => crate::cli::demo::service::run().await?,
    }
    Ok(())
}

fn init_command(data_dir: &DataDir, args: InitArgs) -> Result<()> {
    let opts = InitOptions {
        name: args.name,
        listen: args.addrs.listen,
        advertise: args.addrs.advertise,
        token: tokens::Grant {
            ttl_secs: args.token_ttl.as_secs().max(1),
            uses: args.token_uses.0,
            role: args.token_role,
        },
        cert_validity: args.cert_validity,
    };
    let token = init::init(data_dir, &opts).context("init failed")?;
    println!(
        "initialised cluster in {} as node {:?}",
        data_dir.root().display(),
        opts.name.as_str()
    );
    println!(
        "start it:        halley-node run --data-dir {} --service-address {}",
        data_dir.root().display(),
        SERVICE_ADDRESS_HINT
    );
    println!(
        "                 (--service-address: where entry points bind; 0.0.0.0 serves every interface, 127.0.0.1 only this machine)"
    );
    println!("add a machine:   halley-node join TOKEN --name NAME");
    println!(
        "join token (admits {}, valid {}):",
        admits(opts.token.uses, opts.token.role),
        human_secs(opts.token.ttl_secs)
    );
    println!("{token}");
    Ok(())
}

/// Stops a command only an admin may run on a worker before it reads or checks anything (the
/// node refuses it too; this saves a dry run that would pass, or a prompt, first).
async fn forget_command(data_dir: &DataDir, node: NodeName) -> Result<()> {
    let request = AdminRequest::Forget { node: node.clone() };
    let AdminResponse::Forgotten {
        generation,
        told,
        refused,
    } = admin::call(data_dir, request).await?
    else {
        bail!("the node answered forget with something else");
    };
    let told: Vec<String> = told.iter().map(ToString::to_string).collect();
    println!(
        "forgot {node} (generation {generation}) here{}; if it starts again it shows again",
        if told.is_empty() {
            String::new()
        } else {
            format!(" and on {}", told.join(", "))
        }
    );
    if !refused.is_empty() {
        let why: Vec<String> = refused.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        bail!(
            "{node} is still shown by: {}; run 'halley-node forget {node}' again once they see it gone",
            why.join("; ")
        );
    }
    Ok(())
}

fn require_admin(data_dir: &DataDir, command: &str) -> Result<()> {
    let record = data_dir.load_node()?;
    if record.role != Role::Admin {
        bail!(
            "'{command}' refused: this node ({}) is a {}, and only an admin coordinates rollouts; run it on an admin node ('halley-node status' shows each node's role)",
            record.name,
            record.role
        );
    }
    Ok(())
}

/// The join token: the argument, the file, or stdin.
fn read_token(args: &JoinArgs) -> Result<JoinToken> {
    use std::io::{IsTerminal, Read};
    let (text, from) = match (&args.token, &args.token_file) {
        (Some(text), _) => (text.clone(), "the argument".to_owned()),
        (None, Some(path)) if path.as_os_str() != "-" => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, file) => {
            if file.is_none() && std::io::stdin().is_terminal() {
                bail!("no join token: give it as an argument, with --token-file PATH, or on stdin");
            }
            // Stdin that never closes (an ssh session) would look like a hang.
            eprintln!("reading the join token from stdin (end it with Ctrl-D)…");
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the token from stdin")?;
            (text, "stdin".to_owned())
        }
    };
    let text = text.trim();
    if text.is_empty() {
        bail!(
            "no join token in {from}: give it as an argument, with --token-file PATH, or on stdin"
        );
    }
    Ok(text.parse()?)
}

async fn join_command(data_dir: &DataDir, args: JoinArgs) -> Result<()> {
    let token = read_token(&args)?;
    let opts = JoinOptions {
        token,
        name: args.name,
        listen: args.addrs.listen,
        advertise: args.addrs.advertise,
    };
    let record = join::join(data_dir, &opts).await.context("join failed")?;
    println!(
        "joined cluster {} as node {:?} (advertising {})",
        record.cluster_id,
        record.name.as_str(),
        record.advertise
    );
    println!(
        "start it: halley-node run --data-dir {} --service-address {}",
        data_dir.root().display(),
        SERVICE_ADDRESS_HINT
    );
    Ok(())
}

async fn deploy_command(data_dir: &DataDir, args: DeployArgs) -> Result<()> {
    if args.resume {
        deploy::resume(
            data_dir,
            &args.service,
            args.force,
            args.skip_unreachable,
            &mut std::io::stdout(),
        )
        .await?;
        return Ok(());
    }
    let spec = config::load_service(&args.config, &args.service)?;
    let (Some(version), Some(artifact)) = (args.version, args.artifact) else {
        bail!("deploy needs --version and --artifact (or --resume)");
    };
    let opts = DeployOptions {
        service: args.service,
        spec,
        version,
        artifact,
        sha256: args.sha256,
        skip_unreachable: args.skip_unreachable,
    };
    if args.dry_run {
        print!("{}", crate::cli::dry_run::dry_run(data_dir, &opts).await?);
        return Ok(());
    }
    deploy::deploy(data_dir, &opts, &mut std::io::stdout()).await?;
    Ok(())
}

async fn service_command(data_dir: &DataDir, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Remove {
            service,
            purge,
            yes,
        } => {
            require_admin(data_dir, "service remove")?;
            if purge {
                let warning = format!(
                    "this deletes the data directory and every backup of {service} on every host, for good"
                );
                backup_cli::confirm(&service, &warning, yes)?;
            }
            deploy::remove(data_dir, &service, purge, &mut std::io::stdout()).await?;
        }
    }
    Ok(())
}

async fn backup_command(data_dir: &DataDir, command: BackupCommand) -> Result<()> {
    match command {
        BackupCommand::List { service, node } => {
            let list = backup_cli::list(data_dir, node, &service).await?;
            print!("{}", backup_cli::table(&list));
        }
        BackupCommand::Create { service, node } => {
            backup_cli::create(data_dir, node, &service, &mut std::io::stdout()).await?;
        }
        BackupCommand::Restore {
            service,
            id,
            node,
            yes,
        } => {
            backup_cli::restore(data_dir, node, &service, &id, yes, &mut std::io::stdout()).await?;
        }
    }
    Ok(())
}

async fn set_draining(data_dir: &DataDir, node: Option<NodeName>, draining: bool) -> Result<()> {
    let who = node
        .as_ref()
        .map_or("this node".into(), |n| format!("node {n}"));
    admin::call(data_dir, AdminRequest::SetDraining { node, draining }).await?;
    if draining {
        println!("{who} is draining");
    } else {
        println!(
            "{who}: the operator's drain is cleared (a rollout holding it for a service keeps it draining until that rollout ends or its hold expires)"
        );
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_shown_once() {
        let path = std::path::Path::new("/nonexistent/halley-describe-test");
        let error = std::fs::read(path)
            .map_err(crate::error::Error::io("cannot read", path))
            .context("init failed")
            .unwrap_err();
        let text = describe(&error);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("init failed: cannot read /nonexistent"),
            "{text}"
        );
    }
}
