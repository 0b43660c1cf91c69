//! One module per subcommand.

pub mod contract;
