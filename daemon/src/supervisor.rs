//! The supervisor (being written).

pub fn main(_args: &[String]) -> i32 {
    eprintln!("rwsgi-daemon: the supervisor is not built yet");
    2
}
