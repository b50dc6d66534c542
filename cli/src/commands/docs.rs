//! `tradeplex completions SHELL` and `tradeplex man`: shell completions and a roff man
//! page generated from the same clap definitions that parse the command line, so they
//! cannot drift from it.

use clap::CommandFactory;

/// Flags of `tradeplex completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = super::Args::command();
    clap_complete::generate(args.shell, &mut cmd, "tradeplex", &mut std::io::stdout());
    Ok(super::exit::OK)
}

/// Flags of `tradeplex man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// A subcommand: print its page, tradeplex-SUBCOMMAND(1), instead of tradeplex(1).
    subcommand: Option<String>,
}

/// Prints a man page in roff on stdout: tradeplex(1) (global flags, the subcommands), or
/// one subcommand's page with its flags.
pub fn man(args: ManArgs) -> anyhow::Result<i32> {
    let mut cmd = super::Args::command();
    // Propagates the global flags (--broker, --events, …) into every subcommand's page.
    cmd.build();
    let page = match &args.subcommand {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                return Err(super::UsageError(format!(
                    "no subcommand {name:?} (see `tradeplex --help`)"
                ))
                .into());
            };
            // Its own page name (tradeplex-call) and synopsis (`tradeplex call …`).
            sub.clone()
                .bin_name(format!("tradeplex {name}"))
                .display_name(format!("tradeplex-{name}"))
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout().lock())?;
    Ok(super::exit::OK)
}
