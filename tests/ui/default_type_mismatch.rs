#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(default = "yes")]
    pub active: bool,
}

fn main() {}
