//! `git-remote-aspen`: the git remote helper for `aspen://CLUSTER/REPO` URLs. git runs it;
//! see `aspen_forge::remote`.

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fatal: cannot start the async runtime: {e}");
            std::process::exit(128);
        }
    };
    let code = runtime.block_on(aspen_forge::remote::run(std::env::args().collect()));
    std::process::exit(code);
}
