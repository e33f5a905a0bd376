// Every mistake is reported in one compile, and the struct itself stays
// usable (no cascade of "cannot find type" errors).
#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(indx)]
    pub email: String,
    #[field(max_length = 0)]
    pub name: String,
}

fn use_it(u: User) -> String {
    u.email
}

fn main() {}
