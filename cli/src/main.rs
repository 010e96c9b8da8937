use clap::Parser;

fn main() {
    let cli = weft::args::Cli::parse();
    weft::init_logging(&cli.log_level);
    match weft::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::exit(1);
        }
    }
}
