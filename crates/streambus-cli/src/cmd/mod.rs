//! One module per command; [`run`] dispatches.

use anyhow::Result;
use streambus::{Client, Connection};

use crate::cli::{Cli, Command};

mod consume;
mod dlq;
mod exec;
mod groups;
mod monitor;
mod publish;
mod scale;
mod tail;

pub async fn run(cli: Cli) -> Result<()> {
    let client = Client::open(&cli.redis)?;
    tracing::debug!(redis = client.display_url(), "using Redis");
    match cli.command {
        Command::Publish(args) => publish::run(&client, args).await,
        Command::Tail(args) => tail::run(&client, args).await,
        Command::Consume(args) => consume::run(&client, args).await,
        Command::Groups(args) => groups::run(&client, args).await,
        Command::Dlq(args) => dlq::run(&client, args).await,
        Command::Monitor(args) => monitor::run(&client, args).await,
        Command::Scale(args) => scale::run(&client, args).await,
    }
}

/// The shared connection. The library's error already names the (masked) URL
/// and says what to check.
async fn connect(client: &Client) -> Result<Connection> {
    Ok(client.connect().await?)
}
