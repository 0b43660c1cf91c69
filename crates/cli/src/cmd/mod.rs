//! One module per subcommand.

pub mod bench;
pub mod contract;
pub mod sim;
pub mod train;
