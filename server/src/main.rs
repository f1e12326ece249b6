//! The `rollcall` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Phoenix-style presence server.
#[derive(Parser, Debug)]
#[command(name = "rollcall", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a rollcall node.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "ROLLCALL_HOST", default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on.
        #[arg(long, env = "ROLLCALL_PORT", default_value_t = 4000)]
        port: u16,
        /// Directory served at `/`.
        #[arg(long, env = "ROLLCALL_STATIC_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../www"))]
        static_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            host,
            port,
            static_dir,
        } => {
            let addr: SocketAddr = format!("{host}:{port}").parse()?;
            let app = rollcall_server::app(&rollcall_server::Config { static_dir });
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!("rollcall listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).await?;
        }
    }
    Ok(())
}
