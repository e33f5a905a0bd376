#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(unique, max_length = 10, unique)]
    pub email: String,
}

fn main() {}
