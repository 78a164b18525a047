//! `halley-node logs SERVICE`: a service's slot logs on this node or on `--node`, by release,
//! like `tail` and `tail -f`.
//!
//! ## Guarantees
//! - What is printed is the service's own output as text (env values redacted by the
//!   node), with a `==> … <==` header naming the release and slot whenever the output switches
//!   between the two slots' logs, as `tail` does with several files.
//! - `--follow` asks again every half second from where the last answer ended, so it survives
//!   a rotation (it says lines may be missing) and a daemon restart in between.

use std::io::Write;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::{Color, ReleaseVersion};
use halley_proto::message::{AdminRequest, AdminResponse, LogCursor, LogsReply, LogsRequest};
use halley_proto::spec::ServiceName;

use crate::cli::deploy::unexpected;
use crate::daemon::admin;
use crate::error::{Error, Result};
use crate::store::datadir::DataDir;

/// How often `--follow` asks for more.
const POLL: Duration = Duration::from_millis(500);

/// What `logs` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The service.
    pub service: ServiceName,
    /// The node [default: this one].
    #[arg(long)]
    pub node: Option<NodeName>,
    /// Lines from the end of each slot's log.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: u32,
    /// Keep printing what is written (Ctrl-C to stop).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The release [default: the one the active slot runs].
    #[arg(long)]
    pub release: Option<ReleaseVersion>,
}

async fn ask(data_dir: &DataDir, args: &LogsArgs, after: Vec<LogCursor>) -> Result<LogsReply> {
    let request = AdminRequest::Logs {
        node: args.node.clone(),
        request: LogsRequest {
            service: args.service.clone(),
            release: args.release.clone(),
            lines: args.lines,
            after,
        },
    };
    match admin::call(data_dir, request).await? {
        AdminResponse::Logs(reply) => Ok(reply),
        AdminResponse::Error(e) => Err(Error::Remote(e)),
        other => Err(unexpected("a logs request", &other)),
    }
}

/// Prints the logs, and with `--follow` what is written next until interrupted.
pub async fn run(data_dir: &DataDir, mut args: LogsArgs, out: &mut impl Write) -> Result<()> {
    let first = ask(data_dir, &args, Vec::new()).await?;
    // A follow stays on the release it started with, even once another one serves.
    args.release = Some(first.release.clone());
    let mut printer = Printer::default();
    let mut cursors = printer.print(&first, out)?;
    if !args.follow {
        return Ok(());
    }
    // A slot's log that does not exist yet (the other slot starting the release) is followed
    // from its first line.
    for slot in Color::BOTH {
        let start = LogCursor::start_of(&first.release, slot);
        if !cursors.iter().any(|c| c.file == start.file) {
            cursors.push(start);
        }
    }
    loop {
        tokio::time::sleep(POLL).await;
        match ask(data_dir, &args, cursors.clone()).await {
            Ok(reply) => {
                let next = printer.print(&reply, out)?;
                for c in next {
                    match cursors.iter_mut().find(|old| old.file == c.file) {
                        Some(old) => *old = c,
                        None => cursors.push(c),
                    }
                }
            }
            // The daemon restarting: try again at the next poll.
            Err(e) => eprintln!("(logs: {e}; trying again)"),
        }
    }
}

#[derive(Default)]
struct Printer {
    last_file: Option<String>,
    ends_in_newline: bool,
}

impl Printer {
    /// Prints a reply's chunks; returns the cursors to go on from.
    fn print(&mut self, reply: &LogsReply, out: &mut impl Write) -> Result<Vec<LogCursor>> {
        let several = reply.chunks.len() > 1;
        for chunk in &reply.chunks {
            if chunk.skipped {
                eprintln!(
                    "(the {} log of release {} was rotated: lines written meanwhile may be missing)",
                    chunk.slot, chunk.release
                );
            }
            if chunk.text.is_empty() {
                continue;
            }
            let switched = self.last_file.as_deref() != Some(chunk.cursor.file.as_str());
            if switched && (several || self.last_file.is_some()) {
                if !self.ends_in_newline && self.last_file.is_some() {
                    writeln!(out).map_err(io_error)?;
                }
                writeln!(
                    out,
                    "==> release {}, {} slot, on {} <==",
                    chunk.release, chunk.slot, reply.node
                )
                .map_err(io_error)?;
            }
            out.write_all(chunk.text.as_bytes()).map_err(io_error)?;
            self.ends_in_newline = chunk.text.ends_with('\n');
            self.last_file = Some(chunk.cursor.file.clone());
        }
        out.flush().map_err(io_error)?;
        Ok(reply.chunks.iter().map(|c| c.cursor.clone()).collect())
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::io("cannot write to", "stdout")(e)
}
