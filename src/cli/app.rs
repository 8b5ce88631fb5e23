//! `moslora app`: the local web app.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use moslora::Result;

#[derive(Args)]
pub struct AppArgs {
    /// Where the app keeps its database, subjects and jobs [default: $XDG_DATA_HOME/moslora-app,
    /// else ~/.local/share/moslora-app]
    #[arg(long)]
    data: Option<PathBuf>,
    /// The address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:7860")]
    bind: SocketAddr,
    /// Serve beyond this machine (needs --password)
    #[arg(long)]
    public: bool,
    /// The password every request needs (HTTP Basic, any user name); required with --public
    #[arg(long, env = "MOSLORA_APP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

pub fn run(a: AppArgs) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| moslora::Error::msg(format!("finding this moslora binary: {e}")))?;
    moslora::app::serve(&moslora::app::AppOptions {
        data: a.data.unwrap_or_else(moslora::app::default_data),
        bind: a.bind,
        public: a.public,
        password: a.password,
        exe,
    })
}
